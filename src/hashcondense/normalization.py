"""Per-channel normalisation of uint8 images, recorded with every model and synthetic set so that
images are always decoded the way they were encoded."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("Normalization needs one mean and one std per channel")
        if min(self.std) <= 0:
            raise ValueError(f"Normalization std must be positive, got {self.std}")

    @classmethod
    def from_images(cls, images: torch.Tensor) -> Normalization:
        """Channel statistics of uint8 images (N, C, H, W), e.g. the training split."""
        if images.dtype != torch.uint8:
            raise ValueError(f"Normalization.from_images expects uint8 images, got {images.dtype}")
        x = images.float() / 255
        std, mean = torch.std_mean(x.transpose(0, 1).reshape(x.shape[1], -1), dim=1)
        return cls(tuple(mean.tolist()), tuple(std.clamp_min(1e-3).tolist()))

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, device=like.device).view(shape)
        std = torch.tensor(self.std, device=like.device).view(shape)
        return mean, std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → float32 normalised."""
        return self.normalize_unit(images.float() / 255)

    def normalize_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels in [0, 1] → normalised (differentiable; the inverse of denormalize)."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float → float pixels in [0, 1] (clamped)."""
        mean, std = self._stats(x)
        return (x.float() * std + mean).clamp(0, 1)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}
