"""The paper's reference numbers (Feng et al., ICASSP 2025, "Towards Efficient Deep Hashing
Retrieval: Condensing Your Data via Feature-Embedding Matching"), as data, so every report can
put a measured number beside the one it reproduces without anyone retyping the tables.

All values are retrieval mAP of DHD in percent, copied from the paper's text
(``shared/docs/paper-iem.txt``). The paper prints no numbers for Figs. 1, 3 and 4 (plots only),
so only Tables I and II are here.

Table I's columns are, in the paper's order: Random, DM, DSA, IDC, IEM, Whole set. It has no
Herding column (Herding appears only in Fig. 1), so ``paper_value(..., "herding", ...)`` is
``None``. The whole set does not depend on ipc: the paper repeats one value per (dataset, bits)
in every ipc row; here it is stored once, under ``ipc=None``.

Table II (ablation) gives one mAP per row and does not say at which bit length; it is therefore
looked up without bits. Its IEM rows (57.88, 50.38) differ from Table I's IEM (55.72 / 57.49 at
CIFAR10 ipc 50, 48.69 / 52.79 at ImageNet10 ipc 3) — that is the paper's own inconsistency.
"""

from __future__ import annotations

CONDENSER_ORDER: tuple[str, ...] = ("whole", "random", "herding", "dsa", "dm", "idc", "iem")
ABLATION_ORDER: tuple[str, ...] = ("iem-none", "iem-na", "iem-da", "iem")
DATASET_ORDER: tuple[str, ...] = ("cifar10", "imagenet10", "imagenet20")
HASH_ORDER: tuple[str, ...] = ("dhd", "dpn", "orthohash")

# Table II's two switches per ablation label: (network augmentation, dataset augmentation).
ABLATION_SWITCHES: dict[str, tuple[bool, bool]] = {
    "iem-none": (False, False),
    "iem-na": (True, False),
    "iem-da": (False, True),
    "iem": (True, True),
}

# Table I's "Ratio" column: synthetic images as a share of the training set.
RATIO: dict[tuple[str, int], str] = {
    ("cifar10", 1): "0.2%", ("cifar10", 10): "2%", ("cifar10", 50): "10%",
    ("imagenet10", 1): "0.77%", ("imagenet10", 3): "2.3%",
    ("imagenet20", 1): "0.77%", ("imagenet20", 3): "2.3%",
}

# Table I exactly as printed: one row per (dataset, ipc, bits), columns in the paper's order.
_TABLE1_COLUMNS = ("random", "dm", "dsa", "idc", "iem", "whole")
_TABLE1_ROWS: dict[tuple[str, int, int], tuple[float, ...]] = {
    ("cifar10", 1, 32): (14.83, 18.46, 15.12, 23.67, 24.21, 68.15),
    ("cifar10", 1, 64): (15.35, 18.62, 15.73, 24.65, 25.82, 70.21),
    ("cifar10", 10, 32): (22.99, 29.95, 27.23, 38.92, 45.32, 68.15),
    ("cifar10", 10, 64): (23.54, 30.23, 28.32, 40.32, 45.85, 70.21),
    ("cifar10", 50, 32): (35.47, 41.12, 39.83, 46.78, 55.72, 68.15),
    ("cifar10", 50, 64): (38.82, 43.43, 40.58, 46.21, 57.49, 70.21),
    ("imagenet10", 1, 32): (16.46, 19.84, 18.63, 37.21, 38.32, 63.87),
    ("imagenet10", 1, 64): (17.62, 20.43, 18.42, 39.55, 40.32, 66.05),
    ("imagenet10", 3, 32): (20.48, 21.95, 20.93, 45.78, 48.69, 63.87),
    ("imagenet10", 3, 64): (21.22, 24.10, 21.78, 48.14, 52.79, 66.05),
    ("imagenet20", 1, 32): (10.47, 10.22, 10.94, 24.89, 24.23, 52.05),
    ("imagenet20", 1, 64): (10.14, 11.22, 10.84, 26.60, 25.70, 57.18),
    ("imagenet20", 3, 32): (10.88, 12.88, 11.73, 32.89, 33.34, 52.05),
    ("imagenet20", 3, 64): (10.71, 12.96, 11.78, 34.48, 35.12, 57.18),
}

# Table II as printed, rows top to bottom within each dataset block:
#   NA ✗ DA ✗ -> "iem-none";  NA ✓ DA ✗ -> "iem-na" (network augmentation only);
#   NA ✗ DA ✓ -> "iem-da" (dataset augmentation only);  NA ✓ DA ✓ -> "iem" (both).
_TABLE2_ROWS: dict[tuple[str, int], tuple[float, float, float, float]] = {
    ("cifar10", 50): (43.22, 47.99, 57.73, 57.88),    # "CIFAR10 (50 imgs/cls)"
    ("imagenet10", 3): (25.83, 30.23, 47.63, 50.38),  # "ImageNet10 (3imgs/cls)"
}


def _table1() -> dict[tuple[str, str, int | None, int], float]:
    out: dict[tuple[str, str, int | None, int], float] = {}
    for (dataset, ipc, bits), row in _TABLE1_ROWS.items():
        for condenser, value in zip(_TABLE1_COLUMNS, row, strict=True):
            out[(dataset, condenser, None if condenser == "whole" else ipc, bits)] = value
    return out


# (dataset, condenser, ipc or None for the whole set, bits) -> mAP %.
TABLE1: dict[tuple[str, str, int | None, int], float] = _table1()
# (dataset, condenser, ipc) -> mAP % (bit length not stated in the paper).
TABLE2: dict[tuple[str, str, int], float] = {
    (dataset, condenser, ipc): value
    for (dataset, ipc), row in _TABLE2_ROWS.items()
    for condenser, value in zip(ABLATION_ORDER, row, strict=True)
}
TABLES = ("table1", "table2")


def paper_value(table: str, dataset: str, condenser: str, ipc: int | None,
                bits: int | None = None) -> float | None:
    """The paper's mAP (percent) for one cell, or None where the paper reports none.

    ``table`` is ``"table1"`` or ``"table2"``. For the whole set (Table I) ``ipc`` is ignored;
    for Table II ``bits`` is ignored, since the paper does not state it.
    """
    if table == "table1":
        return TABLE1.get((dataset, condenser, None if condenser == "whole" else ipc, bits))
    if table == "table2":
        return None if ipc is None else TABLE2.get((dataset, condenser, ipc))
    raise ValueError(f"unknown paper table {table!r}; expected one of {TABLES}")
