"""Backbones (feature extractors with ``embed``) and the hashing network built on them."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .convnet import ConvNet
from .hashing import HashingNetwork
from .resnet_ap import ResNetAP10

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "convnet3": ConvNet,
    "resnetap10": ResNetAP10,
}


def default_backbone(resolution: int) -> str:
    """ConvNet-3 for low resolution (CIFAR), ResNetAP-10 above, as in the paper."""
    return "convnet3" if resolution <= 32 else "resnetap10"


def build_backbone(name: str, *, in_channels: int, resolution: int) -> nn.Module:
    """A freshly initialised backbone by registry name ("auto": by resolution)."""
    if name == "auto":
        name = default_backbone(resolution)
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}") from None
    return factory(in_channels=in_channels, resolution=resolution)


__all__ = [
    "BACKBONES", "ConvNet", "HashingNetwork", "ResNetAP10", "build_backbone", "default_backbone",
]
