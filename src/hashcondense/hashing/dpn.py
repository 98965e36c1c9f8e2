"""DPN — Deep Polarized Network (Fan et al., IJCAI 2020), after the authors' re-implementation.

Each class c owns a fixed target code t_c ∈ {±1}^K; the polarization loss is the bitwise hinge
max(0, m − v_k·t_{y,k}) (m = 1), which pushes every bit of the continuous code v beyond ±m on the
side of its class target, so sign(v) collapses onto t_y. Optional ``reg``·mean(v²) keeps codes
from growing without bound once the hinge is satisfied.
Head: Linear(d → K, no bias, N(0, 0.01) init) with no activation or normalisation.

Deviations from kamwoh/DPN (see docs/reference-hashing.md §1.2):
- the hinge is averaged over batch × bits (as in DeepHash-pytorch) by default; the authors sum
  over bits (K× larger), available as ``bit_reduction="sum"``;
- ``codebook="greedy"`` picks, class by class, the best of a fixed number of random candidates by
  min Hamming distance to the codes already chosen (bounded time, deterministic), instead of the
  authors' rejection sampling with a decaying distance threshold (0.61 → 0.2);
- no auxiliary CE head, no adaptive target update and no multi-label targets (labels here are
  single class indices); these are off by default in the reference too.

The class codebook helpers live here and are shared with OrthoHash, whose codebook is the same
construction (``get_codebook`` ≡ ``get_centroid`` in the reference repositories).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import HASH_METHODS, HashBatch

CODEBOOKS = ("random", "greedy")
BIT_REDUCTIONS = ("mean", "sum")
GREEDY_CANDIDATES = 64


def random_codes(n: int, bits: int, generator: torch.Generator) -> torch.Tensor:
    """(n, bits) float32 codes in {-1, +1}, each bit Bernoulli(0.5): nearly orthogonal rows."""
    return torch.randint(0, 2, (n, bits), generator=generator).float() * 2 - 1


def greedy_codes(
    n: int, bits: int, generator: torch.Generator, candidates: int = GREEDY_CANDIDATES
) -> torch.Tensor:
    """(n, bits) ±1 codes; each row is the random candidate farthest (max-min Hamming) from the
    rows before it, which spreads classes apart more than plain random draws."""
    codes = random_codes(1, bits, generator)
    for _ in range(1, n):
        pool = random_codes(candidates, bits, generator)
        min_dist = (bits - pool @ codes.T).min(dim=1).values  # 2 × Hamming distance
        codes = torch.cat([codes, pool[min_dist.argmax()].unsqueeze(0)])  # first on ties
    return codes


def class_codebook(
    num_classes: int, bits: int, *, seed: int, method: str = "random"
) -> torch.Tensor:
    """Deterministic (num_classes, bits) ±1 codebook from its own generator: the same
    (seed, sizes, method) always give the same codes and the global RNG is left untouched."""
    if num_classes < 1 or bits < 1:
        raise ValueError(f"codebook needs num_classes, bits >= 1, got {num_classes}, {bits}")
    if method not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {CODEBOOKS}, got {method!r}")
    if bits < 63 and num_classes > 2**bits:
        raise ValueError(f"{num_classes} classes need distinct class codes, but {bits} bits "
                         f"give only {2**bits}; use --bits {max(1, num_classes - 1).bit_length()}"
                         " or more")
    generator = torch.Generator().manual_seed(seed)
    if method == "greedy":
        codes = greedy_codes(num_classes, bits, generator)
    else:
        codes = random_codes(num_classes, bits, generator)
    return _distinct(codes, generator)


def _distinct(codes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Redraw any row equal to an earlier one (two classes sharing a target code could never be
    told apart; likely with many classes and few bits), leaving distinct codebooks untouched."""
    while True:
        _, first = torch.unique(codes, dim=0, return_inverse=True)
        seen: set[int] = set()
        dup = []
        for i, k in enumerate(first.tolist()):
            (dup.append(i) if k in seen else seen.add(k))
        if not dup:
            return codes
        codes[dup] = random_codes(len(dup), codes.shape[1], generator)


class DPNHead(nn.Module):
    """Linear hash layer; the class targets ride along as a buffer so that they are saved in the
    state dict (a checkpoint reloads the exact codebook it was trained with) but never trained."""

    codebook: torch.Tensor

    def __init__(
        self, feature_dim: int, bits: int, num_classes: int, *, seed: int, codebook: str
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, bits, bias=False)
        nn.init.normal_(self.fc.weight, std=0.01)
        self.register_buffer("codebook", class_codebook(num_classes, bits, seed=seed,
                                                        method=codebook))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


def polarization_loss(
    codes: torch.Tensor, targets: torch.Tensor, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Bitwise hinge max(0, m − v·t); codes and targets (B, K). ``mean`` over batch × bits, or
    ``sum`` over bits then mean over the batch (the authors' scale)."""
    hinge = F.relu(margin - codes * targets)
    return hinge.sum(dim=1).mean() if reduction == "sum" else hinge.mean()


@HASH_METHODS.register("dpn")
@dataclass(frozen=True)
class DPN:
    margin: float = 1.0
    reg: float = 0.0  # authors' default 0; their README suggests 1e-3, FIRe uses 0.1
    bit_reduction: str = "mean"
    codebook: str = "random"
    seed: int = 0
    name: ClassVar[str] = "dpn"
    two_views: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (self.margin > 0 and math.isfinite(self.margin)):
            raise ValueError(f"DPN margin must be positive, got {self.margin}")
        if not (self.reg >= 0 and math.isfinite(self.reg)):
            raise ValueError(f"DPN reg must be >= 0, got {self.reg}")
        if self.bit_reduction not in BIT_REDUCTIONS:
            raise ValueError(
                f"DPN bit_reduction must be one of {BIT_REDUCTIONS}, got {self.bit_reduction!r}"
            )
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"DPN codebook must be one of {CODEBOOKS}, got {self.codebook!r}")

    def make_head(self, feature_dim: int, bits: int, num_classes: int) -> nn.Module:
        return DPNHead(feature_dim, bits, num_classes, seed=self.seed, codebook=self.codebook)

    def loss(self, batch: HashBatch, head: nn.Module) -> torch.Tensor:
        v = batch.codes.float()
        loss = polarization_loss(v, head.codebook[batch.labels], self.margin, self.bit_reduction)
        if self.reg:
            loss = loss + self.reg * v.pow(2).mean()
        return loss
