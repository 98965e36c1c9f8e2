"""Herding coreset (Welling 2009; Chen et al. 2012, as used by DC/IDC): per class, greedily pick
the real images whose running feature mean tracks the class mean.

Feature space: the backbone of a DHD hashing network trained on the whole train split. Retrieval
is the task the coreset must serve, so its features — not a classifier's — define what a
representative image is (IDC herds in the feature space of a network trained on its own task).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from ..data import LabeledImages
from ..hashing import build_hash_method
from ..hashing.trainer import TrainConfig, train_hashing_network
from ..normalization import Normalization
from ..synthetic import SyntheticSet
from .base import CONDENSERS, Budget, Runtime, SnapshotCallback, check_ipc
from .driver import Execution
from .random import coreset

log = logging.getLogger(__name__)


def herding_select(features: torch.Tensor, k: int) -> list[int]:
    """Greedy herding on features (n, d): step t picks the unchosen x closest (L2) to
    (t+1)·μ − Σ chosen, so the mean of the chosen set follows the class mean μ."""
    if not 1 <= k <= features.shape[0]:
        raise ValueError(f"cannot herd {k} items from {features.shape[0]}")
    feats = features.double()
    mu = feats.mean(0)
    running = torch.zeros_like(mu)
    available = torch.ones(feats.shape[0], dtype=torch.bool)
    chosen: list[int] = []
    for t in range(k):
        dist = ((feats - ((t + 1) * mu - running)) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return chosen


@torch.no_grad()
def embed_all(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 500):
    """Features (N, D) on the CPU, computed in chunks on the backbone's device."""
    backbone.eval()
    device = next(backbone.parameters()).device
    return torch.cat([backbone.embed(images[i : i + batch_size].to(device)).float().cpu()
                      for i in range(0, images.shape[0], batch_size)])


@CONDENSERS.register("herding")
@dataclass(frozen=True)
class HerdingCondenser:
    backbone: str = "auto"
    feature_bits: int = 32
    # the calibrated CPU recipe's batch size; 10 epochs of a 5,000-image split ≈ 1,600 steps
    feature_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=10, batch_size=32))
    name: str = "herding"
    algorithm_version: ClassVar[int] = 1
    iterative: ClassVar[bool] = False  # a feature network, then a greedy pass: no budget

    def with_runtime(self, runtime: Runtime) -> HerdingCondenser:
        return replace(self, feature_train=runtime.apply(self.feature_train))

    def condense(self, train: LabeledImages, ipc: int, *, normalization: Normalization,
                 seed: int, budget: Budget | None = None,
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
        """Under several ranks every rank trains the same (seeded) feature network, then embeds
        and herds only its own classes; the selections are gathered in class order."""
        world = (execution or Execution()).world
        check_ipc(train, ipc)
        start = time.perf_counter()
        images = normalization.normalize(train.images)
        trained = train_hashing_network(
            images, train.labels, method=build_hash_method("dhd"), bits=self.feature_bits,
            num_classes=len(train.classes), backbone=self.backbone,
            config=self.feature_train, seed=seed, progress=progress and world.is_main,
        )
        chosen = []
        for c in world.owned_classes(len(train.classes)):
            members = torch.nonzero(train.labels == c).flatten()
            features = embed_all(trained.model.backbone, images[members])
            chosen.append(members[herding_select(features, ipc)])
        index = world.gather_classes(torch.cat(chosen), len(train.classes))
        log.info("herding: feature network %.0fs, selection done", trained.seconds)
        return coreset(train, index.numpy(), normalization, {
            "method": self.name, "ipc": ipc, "seed": seed,
            "feature_epochs": self.feature_train.epochs, "feature_bits": self.feature_bits,
            "seconds": time.perf_counter() - start,
        })
