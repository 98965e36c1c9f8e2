"""DHD — Deep Hash Distillation (Jang et al., ECCV 2022, arXiv 2112.08816).

Loss = L_proxy(h_weak) + λ1·L_distill(h_strong, h_weak) + λ2·L_quant(h_weak) with
- L_proxy: cross-entropy over cos(h, p_c)/τ against learnable class proxies p_c (τ = 0.2),
- L_distill: 1 − cos(h_strong, stopgrad(h_weak)) (self-distillation from the weak view),
- L_quant: BCE between Gaussian bumps at ±1 (σ = 0.5) and the sign of h, pushing codes to ±1.
Head: Linear(d → K, no bias) → LayerNorm(K) → tanh; proxies (C, K) are head parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import HASH_METHODS, HashBatch


class DHDHead(nn.Module):
    def __init__(self, feature_dim: int, bits: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(feature_dim, bits, bias=False)
        self.norm = nn.LayerNorm(bits)
        self.proxies = nn.Parameter(torch.empty(num_classes, bits))
        nn.init.xavier_uniform_(self.proxies, gain=nn.init.calculate_gain("tanh"))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.fc(features)))


def proxy_loss(codes: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor, tau: float):
    """Cross-entropy over cosine similarities to class proxies; codes (B, K), proxies (C, K)."""
    logits = F.normalize(codes, dim=1) @ F.normalize(proxies, dim=1).T / tau
    return F.cross_entropy(logits, labels)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 − cos(student, stopgrad(teacher)); in [0, 2]."""
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def bce_quantization_loss(codes: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """BCE of Gaussian bumps around +1 and −1 against the (detached) sign of each code entry."""
    near_pos = torch.exp(-((codes - 1) ** 2) / (2 * sigma**2)).clamp(1e-6, 1 - 1e-6)
    near_neg = torch.exp(-((codes + 1) ** 2) / (2 * sigma**2)).clamp(1e-6, 1 - 1e-6)
    target = ((torch.sign(codes) + 1) / 2).detach()
    return F.binary_cross_entropy(near_pos, target) + F.binary_cross_entropy(near_neg, 1 - target)


@HASH_METHODS.register("dhd")
@dataclass(frozen=True)
class DHD:
    tau: float = 0.2
    lambda_distill: float = 0.1
    lambda_quant: float = 0.1
    sigma: float = 0.5
    name: ClassVar[str] = "dhd"
    two_views: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"DHD tau must be positive, got {self.tau}")

    def make_head(self, feature_dim: int, bits: int, num_classes: int) -> nn.Module:
        return DHDHead(feature_dim, bits, num_classes)

    def loss(self, batch: HashBatch, head: nn.Module) -> torch.Tensor:
        h = batch.codes.float()
        loss = proxy_loss(h, head.proxies, batch.labels, self.tau)
        loss = loss + self.lambda_quant * bce_quantization_loss(h, self.sigma)
        if batch.codes_strong is not None:
            loss = loss + self.lambda_distill * distillation_loss(batch.codes_strong.float(), h)
        return loss
