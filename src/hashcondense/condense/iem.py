"""IEM — Information-intensive feature-Embedding Matching (Feng et al., ICASSP 2025; §III).

Distribution matching in the backbone's feature-embedding space (Eq. 7) plus
(a) network augmentation (Eq. 4): every matching network (freshly initialised, or IDC's
    trained one with ``matching.trained_networks``, perturbed on a copy) is perturbed,
    θ' = θ + α·d with d ~ N(0, I) rescaled to the Frobenius norm of the weights (per output
    filter by default, as Acc-DD's filter normalisation; per layer as an option), biases and
    norm parameters untouched; |α| ~ U(α_min, α_max) with a random sign unless fixed;
(b) dataset augmentation by multi-formation (Eq. 5–6): each stored image holds f×f tiles
    initialised from f² downsized real images of its class and decoded to f² training images;
(c) siamese DSA on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from ..data import LabeledImages
from ..normalization import Normalization
from ..synthetic import SyntheticSet
from .base import CONDENSERS, Budget, Runtime, SnapshotCallback
from .driver import Execution
from .matching import ALGORITHM_VERSION, MatchingConfig, match_distributions

PERTURB_MODES = ("filter", "layer")


@dataclass(frozen=True)
class PerturbConfig:
    alpha: float | None = None  # fixed α; None draws |α| ~ U(alpha_min, alpha_max), random sign
    alpha_min: float = 0.01
    alpha_max: float = 0.09
    mode: str = "filter"

    def __post_init__(self) -> None:
        if self.mode not in PERTURB_MODES:
            raise ValueError(f"perturbation mode must be one of {PERTURB_MODES}, got {self.mode!r}")
        if not 0 <= self.alpha_min <= self.alpha_max:
            raise ValueError(f"need 0 <= alpha_min <= alpha_max, got {self.alpha_min}, "
                             f"{self.alpha_max}")


@torch.no_grad()
def perturb_weights(net: nn.Module, config: PerturbConfig, generator: torch.Generator) -> float:
    """Eq. 4 in place on every weight with ≥ 2 dims (conv / linear); returns the α used.

    The direction d ~ N(0, I) is rescaled so that each output filter's (or the whole layer's)
    Frobenius norm equals that of the weights it perturbs: the step is relative to the scale
    the initialisation gave each filter.
    """
    if config.alpha is not None:
        alpha = config.alpha
    else:
        u = torch.rand((), generator=generator).item()
        sign = 1.0 if torch.rand((), generator=generator).item() < 0.5 else -1.0
        alpha = sign * (config.alpha_min + (config.alpha_max - config.alpha_min) * u)
    for p in net.parameters():
        if p.dim() < 2:
            continue  # biases and norm parameters stay as initialised
        d = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        if config.mode == "filter":
            w_norm = p.flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1))
            d_norm = d.flatten(1).norm(dim=1).view(-1, *[1] * (p.dim() - 1))
        else:
            w_norm, d_norm = p.norm(), d.norm()
        p.add_(alpha * d * (w_norm / d_norm.clamp_min(1e-12)))
    return alpha


def default_factor(resolution: int) -> int:
    """f = 2 at low resolution (≤ 32 px), 3 above, as the paper (after IDC) sets it."""
    return 2 if resolution <= 32 else 3


@CONDENSERS.register("iem")
@dataclass(frozen=True)
class IEM:
    """Defaults: 200 iterations (CIFAR-10; the paper uses 300 for ImageNet subsets)."""

    matching: MatchingConfig = field(default_factory=lambda: MatchingConfig(lr=5.0))
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    network_aug: bool = True
    dataset_aug: bool = True
    factor: int | None = None  # None: default_factor(resolution)
    iterations: int = 200
    name: str = "iem"
    # not fields: the loop's version enters cache keys without changing the options
    algorithm_version: ClassVar[int] = ALGORITHM_VERSION
    iterative: ClassVar[bool] = True

    def with_runtime(self, runtime: Runtime) -> IEM:
        return replace(self, matching=runtime.apply(self.matching))

    def condense(self, train: LabeledImages, ipc: int, *, normalization: Normalization,
                 seed: int, budget: Budget | None = None,
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
        factor = 1
        if self.dataset_aug:
            factor = self.factor or default_factor(train.resolution)
            if factor > train.resolution // 4:
                raise ValueError(f"multi-formation factor {factor} is too large for "
                                 f"{train.resolution} px images")
        config = replace(self.matching, factor=factor)
        hook = (lambda net, g: perturb_weights(net, self.perturb, g)) if self.network_aug else None
        return match_distributions(
            train, ipc, method=self.name, config=config, normalization=normalization, seed=seed,
            budget=budget or Budget(iterations=self.iterations), network_hook=hook,
            metadata={"network_aug": self.network_aug, "dataset_aug": self.dataset_aug,
                      "perturb": vars(self.perturb) if self.network_aug else None},
            on_snapshot=on_snapshot, progress=progress, execution=execution,
        )
