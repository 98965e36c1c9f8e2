"""Random coreset: ``ipc`` real images drawn uniformly per class with a seeded generator."""

from __future__ import annotations

import numpy as np
import torch


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
