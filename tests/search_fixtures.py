"""Shared builders for the search tests: a briefly trained digits model, and an index of PNG
files written to disk (so thumbnails and uploads go through real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashcondense.api import train_run
from hashcondense.hashing.trainer import TrainConfig
from hashcondense.retrieval.index import CodeIndex
from hashcondense.serve.engine import QueryEncoder


def train_digits_model(out: Path, *, bits: int = 32, seed: int = 0) -> Path:
    """A ConvNet-3 DHD model trained for a few epochs on the digits protocol at 8 px."""
    train_run(dataset="digits", data_root=None, resolution=8, split_seed=0, subset="random",
              ipc=5, hash_method="dhd", backbone=None, bits=bits,
              train_config=TrainConfig(epochs=3, compile="off"), seed=seed, out=out,
              progress=False)
    return out


def write_png_index(root: Path, model_dir: Path, *, per_class: int = 4,
                    upscale: int = 1) -> tuple[Path, list[Path]]:
    """Write digits database images as ``images/<class>/<n>.png`` and index those files with
    the library API (codes from the decoded files, sources = absolute paths)."""
    from PIL import Image

    from hashcondense.data import make_split

    split = make_split("digits", resolution=8)
    encoder = QueryEncoder.load(model_dir)
    labels = split.database.labels.numpy()
    paths, pixels, kept = [], [], []
    for c in range(10):
        for i in np.flatnonzero(labels == c)[:per_class]:
            path = root / "images" / str(c) / f"{int(i)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(split.database.images[i, 0].numpy())
            if upscale > 1:
                img = img.resize((8 * upscale, 8 * upscale), Image.Resampling.NEAREST)
            img.save(path)
            paths.append(path.resolve())
            pixels.append(encoder.decode(path.read_bytes(), str(path)))
            kept.append(c)
    codes = encoder.encode(np.stack(pixels))
    index = CodeIndex.create(codes, np.array(kept), sources=[str(p) for p in paths],
                             classes=split.database.classes, model=encoder.fingerprint,
                             info={"precision": encoder.precision})
    out = root / "index"
    index.save(out)
    return out, paths
