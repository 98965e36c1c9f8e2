"""One recipe per compute profile — the judge's training and the condensation budget — in one
place, shared by every command and grid, so that all training sets of a comparison get the same
budgets and a user's ``train``/``condense`` match the README's tables.

Tiny sets (coresets and synthetic sets) are budgeted in optimiser *steps*, not epochs: a
multi-formation set decodes to f² times more images than a coreset of the same ipc, and a step
budget gives both the same compute (every step one batch, or the whole set when smaller).
"""

from __future__ import annotations

from .hashing.trainer import TrainConfig
from .settings import PROFILES

RECIPES: dict[str, dict[str, TrainConfig]] = {
    # fits a 2-core CPU. Batch 32 (not 256): at equal compute, 6 epochs of the CIFAR-10 split
    # gave mAP@1000 37.7 at batch 32, 34.6 at 64 and 23.8 at 256 (benchmarks/configs/
    # calibrate_recipe.yaml re-runs it on the validation protocol)
    "cpu": {"subset": TrainConfig(epochs=1, min_steps=1000, batch_size=32, compile="auto"),
            "whole": TrainConfig(epochs=40, batch_size=32, compile="auto")},
    # about the dataset-condensation convention (1,000 epochs of a 10-image-per-class set,
    # 2,000 steps at 50 per class) as a step budget, and a long whole-set run
    "paper": {"subset": TrainConfig(epochs=1, min_steps=2000, compile="auto"),
              "whole": TrainConfig(epochs=200, compile="auto")},
    # CI: proves the pipeline runs, says nothing about accuracy
    "smoke": {"subset": TrainConfig(epochs=1, min_steps=3), "whole": TrainConfig(epochs=1)},
}


def training_recipe(profile: str, *, whole: bool) -> TrainConfig:
    try:
        recipes = RECIPES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}"
                         ) from None
    return recipes["whole" if whole else "subset"]


# Condensation budgets (iterations, seconds) per profile; ``None`` iterations = the method's
# reference count (IEM 200, DM 20,000, DSA 1,000, IDC 2,000). cpu: 200 iterations or 5
# minutes, the budgets of the committed cpu tables; smoke: proves the pipeline.
CONDENSE_BUDGETS: dict[str, tuple[int | None, float | None]] = {
    "cpu": (200, 300.0),
    "paper": (None, None),
    "smoke": (2, None),
}


def default_profile() -> str:
    """``paper`` where CUDA is available, else the calibrated ``cpu`` recipe."""
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


def condense_budget(profile: str, reference_iterations: int | None, *,
                    iterations: int | None = None, seconds: float | None = None
                    ) -> tuple[int | None, float | None]:
    """(iterations, seconds) of a condensation under ``profile``: the profile's budget, never
    more iterations than the method's reference, with explicit values overriding."""
    if profile not in CONDENSE_BUDGETS:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    its, secs = CONDENSE_BUDGETS[profile]
    if its is None or (reference_iterations is not None and reference_iterations < its):
        its = reference_iterations
    return (its if iterations is None else iterations, secs if seconds is None else seconds)
