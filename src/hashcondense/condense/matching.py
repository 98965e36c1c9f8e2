"""Distribution matching in the feature-embedding space (DM, Zhao & Bilen 2023; IEM Eq. 7) and
the loop that DM and IEM share.

All classes go through one forward pass: instance norm has no cross-sample statistics, so a
batch holding every class gives each image the features it would get alone. The siamese DSA
draw is per class (one draw per class shared by its real and synthetic images), expanded to
per-sample parameters with ``DSAParams.take``. Two documented differences from the DM reference:
in DSA mode "S" one augmentation family is drawn per iteration for all classes (the reference
draws one per class); real batches are drawn per class without replacement.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..augment import DSAConfig, apply_dsa, sample_dsa_params
from ..data import LabeledImages
from ..models import build_backbone
from ..normalization import Normalization
from ..runtime import (
    COMPILE_MODES,
    CompiledModule,
    autocast,
    chunked_forward,
    default_chunk,
    resolve_compile,
    resolve_device,
    resolve_precision,
)
from ..synthetic import SyntheticSet, decoded_labels, multi_formation_decode, multi_formation_init
from .base import Budget, SnapshotCallback, check_ipc

log = logging.getLogger(__name__)


def class_means(features: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature per class: features (N, D), groups (N,) in [0, C) → (C, D)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype,
                       device=features.device).index_add_(0, groups, features)
    counts = torch.bincount(groups, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def distribution_matching_loss(real_means: torch.Tensor, syn_means: torch.Tensor) -> torch.Tensor:
    """Σ_c ‖mean f(real_c) − mean f(syn_c)‖² (IEM Eq. 7): the linear-kernel MMD summed over
    classes. real_means, syn_means: (C, D); the real side carries no gradient."""
    return ((real_means.detach().float() - syn_means.float()) ** 2).sum()


@dataclass(frozen=True)
class MatchingConfig:
    """Hyperparameters of the shared DM/IEM loop (defaults: DM's reference values)."""

    lr: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    factor: int = 1
    dsa: DSAConfig | None = field(default_factory=DSAConfig)
    backbone: str = "auto"  # ConvNet-3 up to 32 px, ResNetAP-10 above
    precision: str = "auto"
    device: str = "auto"
    compile: str = "off"  # "auto" pays off beyond ~20 iterations (two ~20 s compiles)
    real_chunk: int | None = None  # real images per forward; None: per device; 0: one batch

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {self.batch_real}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.real_chunk is not None and self.real_chunk < 0:
            raise ValueError(f"real_chunk must be >= 0 or None, got {self.real_chunk}")


NetworkHook = Callable[[nn.Module, torch.Generator], None]


def fresh_network(backbone: str, *, in_channels: int, resolution: int, seed: int) -> nn.Module:
    """A randomly initialised backbone from ``seed``, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(backbone, in_channels=in_channels, resolution=resolution)


@torch.no_grad()
def reinitialise(net: nn.Module, backbone: str, *, in_channels: int, resolution: int,
                 seed: int) -> nn.Module:
    """Give ``net`` the weights ``fresh_network(seed)`` would have, in place, so one (compiled)
    module object serves every iteration's freshly initialised network."""
    fresh = fresh_network(backbone, in_channels=in_channels, resolution=resolution, seed=seed)
    for target, value in zip(net.parameters(), fresh.parameters(), strict=True):
        target.copy_(value)
    return net


def initial_synthetic(train: LabeledImages, ipc: int, factor: int, normalization: Normalization,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-image initialisation: per class ipc·f² random real images, f² per stored image."""
    check_ipc(train, ipc * factor * factor)
    images, labels = [], []
    for c in range(len(train.classes)):
        members = torch.nonzero(train.labels == c).flatten()
        pick = members[torch.randperm(len(members), generator=generator)[: ipc * factor**2]]
        real = normalization.normalize(train.images[pick])
        images.append(real if factor == 1 else
                      multi_formation_init(real, factor, train.resolution))
        labels.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def match_distributions(
    train: LabeledImages,
    ipc: int,
    *,
    method: str,
    config: MatchingConfig,
    normalization: Normalization,
    seed: int,
    budget: Budget,
    network_hook: NetworkHook | None = None,
    metadata: dict | None = None,
    on_snapshot: SnapshotCallback | None = None,
    progress: bool = True,
) -> SyntheticSet:
    """Optimise ipc synthetic images per class so that their mean embedding under freshly
    initialised (optionally perturbed) networks matches the real images' (DM / IEM Alg. 1)."""
    device = resolve_device(config.device)
    amp = resolve_precision(config.precision, device)
    num_classes, f, res = len(train.classes), config.factor, train.resolution
    generator = torch.Generator().manual_seed(seed)
    # the network hook draws from its own stream, so switching it off (ablation) leaves every
    # real batch and augmentation draw unchanged
    hook_generator = torch.Generator().manual_seed(seed + 7_919)
    stored, labels = initial_synthetic(train, ipc, f, normalization, generator)
    stored = stored.to(device).requires_grad_(True)
    syn_groups = decoded_labels(labels, f).to(device)
    real = normalization.normalize(train.images).to(device)
    members = [torch.nonzero(train.labels == c).flatten() for c in range(num_classes)]
    optimizer = torch.optim.SGD([stored], lr=config.lr, momentum=config.momentum)
    net = fresh_network(config.backbone, in_channels=train.channels, resolution=res,
                        seed=seed).to(device).requires_grad_(False)
    embed = CompiledModule(net, resolve_compile(config.compile, device))
    real_chunk = default_chunk(device) if config.real_chunk is None else config.real_chunk or None

    def snapshot(iterations: int, seconds: float) -> SyntheticSet:
        return SyntheticSet(
            images=stored.detach().cpu().clone(), labels=labels.clone(), classes=train.classes,
            normalization=normalization, factor=f, resolution=res,
            metadata={**(metadata or {}), "method": method, "ipc": ipc, "seed": seed,
                      "iterations": iterations, "seconds": seconds, "lr": config.lr,
                      "momentum": config.momentum, "batch_real": config.batch_real,
                      "backbone": config.backbone, "precision": str(amp or "fp32"),
                      "compiled": embed.compiled,
                      "dsa": config.dsa.strategy if config.dsa else "none"},
        )

    total = budget.iterations if budget.iterations is not None else math.inf
    bar = tqdm(total=None if math.isinf(total) else total, desc=f"condense {method} ipc={ipc}",
               disable=None if progress else True, leave=False)
    start, it, loss_value = time.perf_counter(), 0, float("nan")
    while not budget.exhausted(it, time.perf_counter() - start):
        reinitialise(net, config.backbone, in_channels=train.channels, resolution=res,
                     seed=seed * 1_000_003 + it)
        if network_hook is not None:
            network_hook(net, hook_generator)
        real_idx = torch.cat([m[torch.randperm(len(m), generator=generator)[:config.batch_real]]
                              for m in members])
        real_groups = train.labels[real_idx].to(device)
        x_real, x_syn = real[real_idx.to(device)], multi_formation_decode(stored, f, res)
        if config.dsa is not None:
            params = sample_dsa_params(config.dsa, num_classes, generator=generator,
                                       siamese=False, height=res, width=res).to(device)
            x_real = apply_dsa(x_real, params.take(real_groups))
            x_syn = apply_dsa(x_syn, params.take(syn_groups))
        with torch.no_grad(), autocast(device, amp):
            real_features = chunked_forward(embed, x_real, real_chunk, pad=embed.compiled)
            real_means = class_means(real_features.float(), real_groups, num_classes)
        with autocast(device, amp):
            syn_means = class_means(embed(x_syn).float(), syn_groups, num_classes)
        loss = distribution_matching_loss(real_means, syn_means)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        it += 1
        loss_value = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        if on_snapshot is not None and it in budget.snapshots:
            on_snapshot(it, time.perf_counter() - start, snapshot(it, time.perf_counter() - start))
    bar.close()
    seconds = time.perf_counter() - start
    log.info("%s ipc=%d: %d iterations in %.1fs, final loss %.4f", method, ipc, it, seconds,
             loss_value)
    result = snapshot(it, seconds)
    result.metadata["final_loss"] = loss_value
    return result
