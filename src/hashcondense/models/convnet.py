"""ConvNet-3, the standard backbone of dataset condensation (Gidaris & Komodakis 2018; DC/DSA/DM).

Each block is conv3x3(width) → instance norm (GroupNorm(C, C), affine) → ReLU → avgpool 2, so a
32 px input ends as a (width, 4, 4) map: the 2048-d ``embed`` feature that DM and IEM match.
"""

from __future__ import annotations

import torch
from torch import nn


def instance_norm(channels: int) -> nn.Module:
    """Instance norm as the condensation literature implements it: GroupNorm(C, C, affine)."""
    return nn.GroupNorm(channels, channels, affine=True)


class ConvNet(nn.Module):
    """ConvNet-D (default depth 3, width 128) with ``embed(x)`` returning the flat feature."""

    def __init__(
        self, *, in_channels: int = 3, resolution: int = 32, width: int = 128, depth: int = 3
    ) -> None:
        super().__init__()
        if resolution % (2**depth):
            raise ValueError(f"resolution {resolution} is not divisible by 2**depth={2**depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                instance_norm(width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side = resolution // 2**depth
        self.feature_dim = width * side * side

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, R, R) images → (N, feature_dim) features."""
        return self.features(x).flatten(1)

    def embed_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``embed(x)`` and the activation maps after every ReLU but the last (DataDAM's
        intermediate layers: at 32 px, (width, 32, 32) and (width, 16, 16))."""
        maps = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                maps.append(x)
        return x.flatten(1), maps[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
