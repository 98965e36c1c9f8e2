"""Random coreset: ``ipc`` real images drawn uniformly per class with a seeded generator."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..data import LabeledImages
from ..normalization import Normalization
from ..synthetic import SyntheticSet
from .base import CONDENSERS, Budget, Runtime, SnapshotCallback, check_ipc
from .driver import Execution


def sample_per_class(labels: torch.Tensor | np.ndarray, ipc: int, *, seed: int) -> np.ndarray:
    """Indices of ``ipc`` random items of every class, grouped by class in label order."""
    labels = np.asarray(labels)
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < ipc:
            raise ValueError(f"class {int(c)} has {len(members)} images, fewer than ipc={ipc}")
        chosen.append(np.sort(rng.choice(members, size=ipc, replace=False)))
    return np.concatenate(chosen)


def coreset(train: LabeledImages, index: np.ndarray, normalization: Normalization,
            metadata: dict) -> SyntheticSet:
    """A coreset as a SyntheticSet (f = 1), so every condenser yields the same artefact."""
    subset = train.subset(index)
    return SyntheticSet(
        images=normalization.normalize(subset.images), labels=subset.labels.clone(),
        classes=train.classes, normalization=normalization, factor=1,
        resolution=train.resolution, metadata={**metadata, "indices": index.tolist()},
    )


@CONDENSERS.register("random")
@dataclass(frozen=True)
class RandomCondenser:
    name: str = "random"
    algorithm_version: ClassVar[int] = 1
    iterative: ClassVar[bool] = False

    def with_runtime(self, runtime: Runtime) -> RandomCondenser:
        return self  # no network

    def condense(self, train: LabeledImages, ipc: int, *, normalization: Normalization,
                 seed: int, budget: Budget | None = None,
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
        """Every rank draws the whole index (microseconds; one numpy stream in class order, so
        the numbers of the single-process version stay): there is nothing worth sharding."""
        check_ipc(train, ipc)
        start = time.perf_counter()
        index = sample_per_class(train.labels, ipc, seed=seed)
        return coreset(train, index, normalization, {
            "method": self.name, "ipc": ipc, "seed": seed,
            "seconds": time.perf_counter() - start,
        })
