"""ResNetAP-10 (IDC, Kim et al. 2022): ResNet-10 whose stride-2 convs are stride-1 conv + 2x2
average pooling, with instance norm, one BasicBlock per stage and a 512-d pooled feature.

Average-pool downsampling keeps gradients w.r.t. input pixels smooth, which matters when the
network is used to optimise synthetic images.
"""

from __future__ import annotations

import torch
from torch import nn

from .convnet import instance_norm


class BasicBlockAP(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = instance_norm(out_ch)
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = instance_norm(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if downsample or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
                nn.AvgPool2d(2) if downsample else nn.Identity(),
                instance_norm(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.pool(out)))
        return torch.relu(out + self.shortcut(x))


class ResNetAP10(nn.Module):
    """ImageNet-branch ResNetAP-10: stages 64/128/256/512, stem chosen by input size as in IDC."""

    def __init__(self, *, in_channels: int = 3, resolution: int = 128, width: int = 64) -> None:
        super().__init__()
        final_side = resolution // (16 if resolution > 64 else 8)
        if final_side < 2:
            # instance norm over a 1x1 map returns its bias: every input would embed alike
            raise ValueError(f"ResNetAP-10 needs resolution >= 16, got {resolution}")
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            instance_norm(width),
            nn.ReLU(inplace=True),
        ]
        if resolution > 64:  # IDC's "mid" stem for 64 < size <= 128
            stem.append(nn.AvgPool2d(2))
        self.stem = nn.Sequential(*stem)
        widths = [width, width * 2, width * 4, width * 8]
        blocks, ch = [], width
        for i, w in enumerate(widths):
            blocks.append(BasicBlockAP(ch, w, downsample=i > 0))
            ch = w
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, R, R) images → (N, 512) globally average-pooled features."""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def embed_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``embed(x)`` and the stem's and every stage's output map but the last stage's."""
        x = self.stem(x)
        maps = [x]
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return x.mean(dim=(2, 3)), maps[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
