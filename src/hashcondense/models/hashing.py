"""A hashing network: backbone feature f(x) followed by a method-specific hash head h(f(x))."""

from __future__ import annotations

import torch
from torch import nn


def sign_codes(v: torch.Tensor) -> torch.Tensor:
    """Continuous codes → int8 in {-1, +1}; 0 maps to +1 so every bit is defined."""
    return torch.where(v >= 0, 1, -1).to(torch.int8)


class HashingNetwork(nn.Module):
    """``forward`` returns continuous codes (N, K); ``encode`` their signs in {-1, +1}."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.embed(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Binary codes (N, K) in {-1, +1}."""
        return sign_codes(self(x))
