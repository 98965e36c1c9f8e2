"""SyntheticSet: multi-formation decode/init, verified save/load, PNG exports, atomic output."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

from hashcondense.normalization import Normalization
from hashcondense.synthetic import (
    FORMAT,
    VERSION,
    SyntheticSet,
    decoded_labels,
    multi_formation_decode,
    multi_formation_init,
)

NORM3 = Normalization((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))


def make_set(ipc: int = 2, classes: int = 3, side: int = 8, factor: int = 1,
             channels: int = 3, seed: int = 0, **kw) -> SyntheticSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(ipc * classes, channels, side, side, generator=g)
    labels = torch.arange(classes).repeat_interleave(ipc)
    norm = NORM3 if channels == 3 else Normalization((0.5,), (0.25,))
    names = tuple(f"class_{i}" for i in range(classes))
    return SyntheticSet(images, labels, names, norm, factor=factor, **kw)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix in (".tmp", ".old")]


# --------------------------------------------------------------------------- multi-formation


@pytest.mark.parametrize(("factor", "side"), [(1, 8), (2, 8), (3, 9), (3, 32)])
def test_decode_shapes(factor: int, side: int) -> None:
    x = torch.randn(4, 3, side, side)
    out = multi_formation_decode(x, factor, side)
    assert out.shape == (4 * factor * factor, 3, side, side)
    assert multi_formation_decode(x, factor, 5).shape == (4 * factor * factor, 3, 5, 5)
    assert decoded_labels(torch.tensor([0, 1, 2, 3]), factor).shape == (4 * factor * factor,)


def test_decode_f1_is_identity() -> None:
    x = torch.randn(3, 1, 7, 7)
    assert torch.equal(multi_formation_decode(x, 1, 7), x)
    assert torch.equal(decoded_labels(torch.tensor([2, 0, 1]), 1), torch.tensor([2, 0, 1]))


@pytest.mark.parametrize(("factor", "side"), [(2, 8), (3, 9)])
def test_decode_tiles_constant_colours_in_order(factor: int, side: int) -> None:
    tile = side // factor
    x = torch.zeros(2, 1, side, side)
    for s in range(2):
        for i in range(factor):
            for j in range(factor):
                x[s, 0, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = 100 * s + 10 * i + j
    out = multi_formation_decode(x, factor, 12)
    labels = decoded_labels(torch.tensor([5, 7]), factor)
    k = 0
    for s in range(2):
        for i in range(factor):
            for j in range(factor):
                torch.testing.assert_close(out[k], torch.full((1, 12, 12), 100.0 * s + 10 * i + j))
                assert int(labels[k]) == (5, 7)[s]
                k += 1


def test_decode_pads_with_zero_when_factor_does_not_divide() -> None:
    x = torch.ones(1, 1, 32, 32)  # f=3 → padded to 33, tiles of 11 with a zero last row/col
    out = multi_formation_decode(x, 3, 11)  # no resampling at R=11: the padding is visible
    assert out.shape == (9, 1, 11, 11)
    assert torch.all(out[0] == 1)
    assert torch.all(out[2, 0, :, -1] == 0) and torch.all(out[2, 0, :, :-1] == 1)
    assert torch.all(out[6, 0, -1, :] == 0)
    assert torch.all(out[8, 0, -1, :] == 0) and torch.all(out[8, 0, :-1, -1] == 0)


@pytest.mark.parametrize(("factor", "side"), [(1, 8), (2, 8), (3, 32)])
def test_gradient_reaches_every_stored_pixel(factor: int, side: int) -> None:
    syn = make_set(side=side, factor=factor)
    syn.images.requires_grad_(True)
    images, _ = syn.decode()
    (images * 1.5).sum().backward()
    assert syn.images.grad is not None
    assert torch.all(syn.images.grad > 0)


def _smooth(n: int, side: int) -> torch.Tensor:
    """Low-frequency images: a random plane plus one slow cosine per image."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    a, b, c, phase = torch.rand(4, n, 3, 1, 1, generator=g)
    return a * xx + b * yy + 0.5 * torch.cos(math.pi * (xx + yy) + 6 * phase) + c


@pytest.mark.parametrize(("factor", "side"), [(1, 16), (2, 32), (3, 33)])
def test_init_then_decode_recovers_smooth_images(factor: int, side: int) -> None:
    real = _smooth(2 * factor * factor, side)
    stored = multi_formation_init(real, factor, side)
    assert stored.shape == (2, 3, side, side) and stored.is_contiguous()
    back = multi_formation_decode(stored, factor, side)
    assert back.shape == real.shape
    err = (back - real).abs()
    assert float(err.mean()) < 0.03 and float(err.max()) < 0.25  # range ~3; edges worst
    if factor == 1:
        torch.testing.assert_close(stored, real)


def test_init_constant_tiles_and_crop() -> None:
    real = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 1, 6, 6)
    stored = multi_formation_init(real, 3, 8)  # tile side ceil(8/3)=3, mosaic 9 cropped to 8
    assert stored.shape == (1, 1, 8, 8)
    assert float(stored[0, 0, 0, 0]) == 0 and float(stored[0, 0, 0, 3]) == 1
    assert float(stored[0, 0, 7, 7]) == 8 and float(stored[0, 0, 3, 0]) == 3
    with pytest.raises(ValueError, match="multiple"):
        multi_formation_init(torch.zeros(5, 1, 6, 6), 2, 8)
    with pytest.raises(ValueError, match="float"):
        multi_formation_init(torch.zeros(4, 1, 6, 6, dtype=torch.uint8), 2, 8)


# --------------------------------------------------------------------------- construction


def test_properties_and_uint8() -> None:
    syn = make_set(ipc=2, classes=3, side=8, factor=2)
    assert syn.ipc == 2 and syn.decoded_ipc == 8 and syn.resolution == 8
    images, labels = syn.decode()
    assert images.shape == (24, 3, 8, 8) and labels.tolist() == sorted(labels.tolist())
    u8 = syn.to_uint8()
    assert u8.dtype == torch.uint8 and u8.shape == (24, 3, 8, 8)
    unbalanced = SyntheticSet(torch.zeros(3, 1, 4, 4), torch.tensor([0, 0, 1]), ("a", "b"),
                              Normalization((0.5,), (0.5,)))
    with pytest.raises(ValueError, match=r"\[2, 1\]"):
        _ = unbalanced.ipc


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"labels": torch.tensor([0, 1, 3])}, "labels must lie"),
        ({"labels": torch.tensor([0, -1, 1])}, "labels must lie"),
        ({"labels": torch.tensor([0, 1])}, "labels"),
        ({"labels": torch.tensor([0, 1, 1], dtype=torch.int32)}, "int64"),
        ({"factor": 0}, "factor"),
        ({"factor": 5}, "factor"),
        ({"images": torch.zeros(3, 3, 4, 4, dtype=torch.float64)}, "float32"),
        ({"images": torch.zeros(3, 3, 4, 5)}, "square"),
        ({"images": torch.full((3, 3, 4, 4), float("nan"))}, "NaN"),
        ({"normalization": Normalization((0.5,), (0.5,))}, "channels"),
        ({"classes": ("a", "a", "b")}, "unique"),
        ({"metadata": {"x": object()}}, "JSON"),
        ({"resolution": 0}, "resolution"),
    ],
)
def test_invalid_construction(change: dict, match: str) -> None:
    args = {"images": torch.zeros(3, 3, 4, 4), "labels": torch.tensor([0, 1, 2]),
            "classes": ("a", "b", "c"), "normalization": NORM3, **change}
    with pytest.raises(ValueError, match=match):
        SyntheticSet(**args)


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path: Path) -> None:
    meta = {"method": "iem", "dataset": "toy", "ipc": 2, "seed": 3, "hp": {"lr": 0.01},
            "wall_seconds": 1.5}
    syn = make_set(side=9, factor=3, resolution=12, metadata=meta)
    out = syn.save(tmp_path / "run" / "syn_ipc2")
    assert out == tmp_path / "run" / "syn_ipc2.json"
    doc = json.loads(out.read_text())
    assert doc["format"] == FORMAT and doc["version"] == VERSION
    for path in (tmp_path / "run" / "syn_ipc2", out, out.with_suffix(".safetensors")):
        back = SyntheticSet.load(path)
        assert torch.equal(back.images, syn.images) and torch.equal(back.labels, syn.labels)
        assert back.classes == syn.classes and back.normalization == syn.normalization
        assert (back.factor, back.resolution, back.metadata) == (3, 12, meta)
    # an existing folder means <folder>/synthetic.*
    assert syn.save(tmp_path / "run") == tmp_path / "run" / "synthetic.json"
    assert SyntheticSet.load(tmp_path / "run").factor == 3
    assert leftovers(tmp_path) == []


def test_load_refuses_tampered_tensor_file(tmp_path: Path) -> None:
    syn = make_set()
    meta = syn.save(tmp_path / "s")
    tensors = meta.with_suffix(".safetensors")
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0x01
    tensors.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"s\.safetensors.*SHA-256"):
        SyntheticSet.load(meta)
    # a well-formed file with other images is refused too
    tensors.write_bytes(st_save({"images": syn.images + 1, "labels": syn.labels}))
    with pytest.raises(ValueError, match=r"s\.safetensors.*does not match"):
        SyntheticSet.load(meta)


def _rewrite(meta: Path, **changes) -> None:
    doc = json.loads(meta.read_text())
    doc.update(changes)
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "something-else"}, "not a hashcondense-synthetic"),
        ({"version": VERSION + 1}, "unsupported"),
        ({"tensors": {"images": {"shape": [6, 3, 8, 9], "dtype": "float32"},
                      "labels": {"shape": [6], "dtype": "int64"}}}, "shape"),
        ({"tensors": {"images": {"shape": [6, 3, 8, 8], "dtype": "float16"},
                      "labels": {"shape": [6], "dtype": "int64"}}}, "dtype"),
        ({"classes": ["a", "b"]}, "labels must lie"),
        ({"factor": 0}, "factor"),
        ({"normalization": {"mean": [0.5], "std": [0.5]}}, "channels"),
    ],
)
def test_load_refuses_inconsistent_json(tmp_path: Path, changes: dict, match: str) -> None:
    meta = make_set().save(tmp_path / "s")
    _rewrite(meta, **changes)
    with pytest.raises(ValueError, match=match) as info:
        SyntheticSet.load(meta)
    assert "s.json" in str(info.value) or "s.safetensors" in str(info.value)


def test_load_refuses_pickle_and_missing_files(tmp_path: Path) -> None:
    meta = make_set().save(tmp_path / "s")
    tensors = meta.with_suffix(".safetensors")
    payload = pickle.dumps({"images": [1, 2, 3]})
    tensors.write_bytes(payload)
    _rewrite(meta, safetensors_sha256=hashlib.sha256(payload).hexdigest())  # reach the parser
    with pytest.raises(ValueError, match=r"s\.safetensors: not a valid safetensors"):
        SyntheticSet.load(meta)
    meta.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SyntheticSet.load(meta)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        SyntheticSet.load(tmp_path / "nothere")


# --------------------------------------------------------------------------- exports


def test_export_grid_png_many_classes_wraps_into_blocks(tmp_path: Path) -> None:
    syn = make_set(ipc=6, classes=200, side=4, factor=1)
    out = syn.export_grid_png(tmp_path / "many.png", upscale=1, gap=1)
    with Image.open(out) as im:  # 40 classes per block, 5 blocks, 1000 // 200 = 5 per class
        block_w = 5 * 4 + 6
        assert im.size == (5 * block_w + 4 * 4, 40 * 4 + 41)
        # class 41 (block 1, row 1) is drawn with 5 images; the gap between blocks stays white
        x0, y0 = block_w + 4 + 1, 1 + 4 + 1
        cells = [[im.getpixel((x0 + j * 5 + dx, y0 + dy)) for dx in range(4) for dy in range(4)]
                 for j in range(6)]
        assert all(any(p != (255, 255, 255) for p in cell) for cell in cells[:5])
        assert all(p == (255, 255, 255) for p in cells[5][:4])  # no 6th image drawn
        assert all(im.getpixel((block_w + k, 10)) == (255, 255, 255) for k in range(4))


def test_export_grid_png(tmp_path: Path) -> None:
    syn = make_set(ipc=3, classes=2, side=8, factor=2)
    out = syn.export_grid_png(tmp_path / "grid.png", max_per_class=2, upscale=2)
    with Image.open(out) as im:
        assert im.mode == "RGB"
        assert im.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 columns, 2 rows (classes), gaps
        assert im.getpixel((0, 0)) == (255, 255, 255)
    out = syn.export_grid_png(tmp_path / "dec.png", decoded=True, upscale=1, gap=1)
    with Image.open(out) as im:  # 12 decoded images per class, capped at 10 columns
        assert im.size == (10 * 8 + 11, 2 * 8 + 3)
    gray = make_set(classes=4, channels=1, side=4)
    with Image.open(gray.export_grid_png(tmp_path / "g.png")) as im:  # auto upscale to 64 px
        assert im.mode == "L" and im.size == (2 * 64 + 3 * 2, 4 * 64 + 5 * 2)
    assert leftovers(tmp_path) == []


def test_export_image_folder(tmp_path: Path) -> None:
    syn = make_set(ipc=2, classes=3, side=9, factor=3, resolution=6)
    target = tmp_path / "export"
    assert syn.export_image_folder(target) == target
    assert sorted(p.name for p in target.iterdir()) == list(syn.classes)
    expected = syn.to_uint8()
    for c, name in enumerate(syn.classes):
        files = sorted((target / name).iterdir())
        assert [p.name for p in files] == [f"{i:05d}.png" for i in range(18)]
        with Image.open(files[0]) as im:
            assert im.size == (6, 6) and im.mode == "RGB"
            first = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        assert torch.equal(first, expected[c * 18])
    assert leftovers(tmp_path) == []
    with pytest.raises(FileExistsError, match="not empty"):
        syn.export_image_folder(target)
    make_set(ipc=1, classes=2, side=4).export_image_folder(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["class_0", "class_1"]
    assert leftovers(tmp_path) == []


def test_export_image_folder_failure_leaves_nothing(tmp_path: Path) -> None:
    bad = SyntheticSet(torch.zeros(2, 2, 4, 4), torch.tensor([0, 1]), ("a", "b"),
                       Normalization((0.5, 0.5), (0.5, 0.5)))  # 2 channels: no PNG mode
    with pytest.raises(ValueError, match="channels"):
        bad.export_image_folder(tmp_path / "x")
    assert list(tmp_path.iterdir()) == []
    unsafe = make_set(classes=2)
    unsafe.classes = ("ok", "../evil")
    with pytest.raises(ValueError, match="folder name"):
        unsafe.export_image_folder(tmp_path / "y")
    assert list(tmp_path.iterdir()) == []
