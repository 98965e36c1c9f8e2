"""OrthoHash — "One Loss for All" (Hoe et al., NeurIPS 2021), after kamwoh/orthohash.

A fixed random ±1 codebook o ∈ {±1}^{C×K} (near-orthogonal rows) acts as the class weights of a
cosine classifier; the loss is cross-entropy on s·(cos(v, o_c) − m·1[c = y]) (CosFace margin),
which at once maximises the cosine to the own code and, since the targets are binary, lowers the
quantisation error of sign(v). Defaults s = 8, m = 0.2 as in the reference ``main.py``; its README
reaches its best CIFAR-10 result with m = 0.3 and the paper's margin ablation favours 0.3–0.4, so
``margin`` is a field. The paper supplement uses s = √K (= 8 at 64 bits); the code fixes s = 8.
Head: Linear(d → K, no bias, N(0, 0.01) init) → BatchNorm1d(K), no tanh; one view.

Optional ``lambda_quant``·mean(1 − cos(v, stopgrad(sign v))) is the reference's ``cs``
quantisation term (off by default there and here). Not implemented: the "arc" margin variant and
the multi-label losses (labels here are single class indices). ``codebook="greedy"`` is DPN's
max-min-Hamming selection (see ``dpn.py``), standing in for the reference's ``O`` option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import HASH_METHODS, HashBatch
from .dpn import CODEBOOKS, DPNHead


class OrthoHashHead(DPNHead):
    """DPN's head (bias-free Linear, the fixed codebook as a buffer that travels in the state
    dict but is never optimised) followed by BatchNorm1d."""

    def __init__(
        self, feature_dim: int, bits: int, num_classes: int, *, seed: int, codebook: str
    ) -> None:
        super().__init__(feature_dim, bits, num_classes, seed=seed, codebook=codebook)
        self.norm = nn.BatchNorm1d(bits)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(features))


def cosine_margin_loss(
    codes: torch.Tensor, codebook: torch.Tensor, labels: torch.Tensor, scale: float, margin: float
) -> torch.Tensor:
    """CE over s·(cos(v, o_c) − m·1[c = y]); codes (B, K), codebook (C, K), labels (B,)."""
    cos = F.normalize(codes, dim=1) @ F.normalize(codebook, dim=1).T
    one_hot = F.one_hot(labels, codebook.shape[0]).to(cos.dtype)
    return F.cross_entropy(scale * (cos - margin * one_hot), labels)


def cosine_quantization_loss(codes: torch.Tensor) -> torch.Tensor:
    """Mean of 1 − cos(v, stopgrad(sign v)): zero when every bit has the same magnitude."""
    return (1 - F.cosine_similarity(codes, torch.sign(codes).detach(), dim=1)).mean()


@HASH_METHODS.register("orthohash")
@dataclass(frozen=True)
class OrthoHash:
    scale: float = 8.0
    margin: float = 0.2
    lambda_quant: float = 0.0
    codebook: str = "random"
    seed: int = 0
    name: ClassVar[str] = "orthohash"
    two_views: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"OrthoHash scale must be positive, got {self.scale}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"OrthoHash margin must be >= 0, got {self.margin}")
        if not (self.lambda_quant >= 0 and math.isfinite(self.lambda_quant)):
            raise ValueError(f"OrthoHash lambda_quant must be >= 0, got {self.lambda_quant}")
        if self.codebook not in CODEBOOKS:
            raise ValueError(
                f"OrthoHash codebook must be one of {CODEBOOKS}, got {self.codebook!r}"
            )

    def make_head(self, feature_dim: int, bits: int, num_classes: int) -> nn.Module:
        return OrthoHashHead(feature_dim, bits, num_classes, seed=self.seed,
                             codebook=self.codebook)

    def loss(self, batch: HashBatch, head: nn.Module) -> torch.Tensor:
        v = batch.codes.float()
        loss = cosine_margin_loss(v, head.codebook, batch.labels, self.scale, self.margin)
        if self.lambda_quant:
            loss = loss + self.lambda_quant * cosine_quantization_loss(v)
        return loss
