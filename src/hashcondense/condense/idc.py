"""IDC — Dataset Condensation via Efficient Synthetic-Data Parameterization (Kim et al., ICML 2022).

Multi-formation: each stored image holds f×f tiles (f = 2 up to 32 px, 3 above,
``iem.default_factor``), initialised from f² downsized random real images of its class and
decoded to f² training images (``synthetic.multi_formation_init`` / ``_decode``); f = 1 is
IDC-I. Stored images live in [0, 1] pixel space, as in the reference, so its image learning
rates apply unchanged; they are clamped to [0, 1] at the start of every iteration and
normalised (then decoded) on the way into the network.

One iteration = ``inner_loop`` (100) inner steps with one network, freshly initialised every
``reinit_every`` (1) iterations and, where the preset says so, first trained for
``early_epochs`` epochs on real data. An inner step: for every class, a real batch (64) and the
class's decoded images (at most 128, a random subset beyond) get one shared DSA draw
(colour, crop and cutout, all applied), and the distance between their cross-entropy gradients
with respect to the conv weights only (MSE on CIFAR, L1 on ImageNet subsets) drives **one image
SGD step per class** (momentum 0.5, one optimiser over the whole stored tensor, so momentum also
moves the other classes, as in the reference); then the network trains on ``n_data`` real
samples (batches of 64, per-sample DSA without cutout, CutMix with probability ``mix_p``; SGD
lr 0.01, momentum 0.9, weight decay 5e-4) — on real data, never on the synthetic set.

Presets (the reference's ``misc/reproduce.py``; "auto" picks by resolution: ``cifar`` up to
32 px, ``imagenet`` above): ``cifar`` — MSE, base image lr 5e-3, n_data 2,000, mix_p 0.5, no
pre-training; ``imagenet`` (its ImageNet-10 setting) — L1, base lr 3e-3, n_data 500, mix_p 1.0,
10 epochs of real training after each re-initialisation. The image lr is the base lr ×
ipc/10 × (resolution / base size)², base size 32 (cifar) or 224 (imagenet), as the reference's
``tune_lr_img``: CIFAR ipc 1/10/50 → 5e-4 / 5e-3 / 2.5e-2. The reference default budget
(2,000 iterations) is CIFAR's; its ImageNet runs use 500.

Differences from the reference, all deliberate:
- the initial tiles are random real images of the class (the reference takes the loader's
  first ones), downsized bilinearly with antialiasing (reference: nearest);
- decoding pads a non-divisible side with the normalised mean colour (reference: grey 0.5);
- CutMix's mixing ratio is drawn from Beta(1, 1) = U(0, 1) (the reference's β is 1 too);
- randomness comes from seeded generators; the ImageNet-100 setting (pretrained networks,
  net lr 0.1) is not reproduced;
- a wall-clock budget is checked after every inner step, so a run may end inside an iteration
  (metadata ``steps`` counts inner steps; ``iterations`` counts completed iterations).

``compile``: torch.compile (AOTAutograd) cannot differentiate twice, so the synthetic branch,
whose gradient is itself differentiated, always runs eagerly; ``compile`` applies to the
first-order passes only — the real-batch gradients and the network's training on real data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..augment import DSAConfig, apply_dsa, sample_dsa_params
from ..data import LabeledImages
from ..normalization import Normalization
from ..runtime import (
    CompiledModule,
    autocast,
    resolve_compile,
    resolve_device,
    resolve_precision,
)
from ..settings import COMPILES
from ..synthetic import SyntheticSet, multi_formation_decode, multi_formation_init
from .base import CONDENSERS, Budget, Runtime, SnapshotCallback, check_ipc
from .driver import Execution, Resumable
from .gradient_matching import (
    DISTANCES,
    fresh_classifier,
    match_loss,
    matched_parameters,
    reinitialise_classifier,
    run_budgeted,
    sample_without_replacement,
)
from .iem import default_factor

IDC_ITERATIONS = 2_000  # the reference's CIFAR budget; pass a smaller Budget on a CPU


@dataclass(frozen=True)
class IDCPreset:
    distance: str
    lr: float  # image lr at ipc 10 and the base size
    base_size: int
    n_data: int  # real samples the network trains on after every inner step
    mix_p: float  # CutMix probability in that training
    early_epochs: int  # epochs of real training after each re-initialisation


IDC_PRESETS: dict[str, IDCPreset] = {
    "cifar": IDCPreset(distance="mse", lr=5e-3, base_size=32, n_data=2000, mix_p=0.5,
                       early_epochs=0),
    "imagenet": IDCPreset(distance="l1", lr=3e-3, base_size=224, n_data=500, mix_p=1.0,
                          early_epochs=10),
}


def preset_for(name: str, resolution: int) -> tuple[str, IDCPreset]:
    if name == "auto":
        name = "cifar" if resolution <= 32 else "imagenet"
    try:
        return name, IDC_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown IDC preset {name!r}; choose from auto, "
                         f"{', '.join(IDC_PRESETS)}") from None


def tuned_image_lr(base_lr: float, ipc: int, resolution: int, base_size: int) -> float:
    """The reference's ``tune_lr_img``: base lr × ipc/10 × (resolution / base size)²."""
    return base_lr * (ipc / 10) * (resolution / base_size) ** 2


@dataclass(frozen=True)
class IDCMatchingConfig:
    """Hyperparameters of the IDC loop; None fields come from the preset."""

    preset: str = "auto"  # "cifar", "imagenet", or "auto" (by resolution)
    lr: float | None = None  # None: tuned_image_lr(preset lr, ipc, resolution)
    momentum: float = 0.5
    distance: str | None = None
    min_param_dim: int = 3  # conv weights only (no biases, norm parameters or FC)
    batch_real: int = 64  # per class for matching; also the network's training batch
    batch_syn_max: int = 128  # decoded synthetic images per class and step, at most
    inner_loop: int = 100
    n_data: int | None = None
    net_lr: float = 0.01
    net_momentum: float = 0.9
    net_weight_decay: float = 5e-4
    mix_p: float | None = None
    early_epochs: int | None = None
    reinit_every: int = 1  # iterations between fresh networks
    aug: DSAConfig | None = field(
        default_factory=lambda: DSAConfig(strategy="color_crop_cutout", mode="M"))
    backbone: str = "auto"
    precision: str = "auto"
    device: str = "auto"
    compile: str = "off"  # first-order passes only (see the module docstring)

    def __post_init__(self) -> None:
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {COMPILES}, got {self.compile!r}")
        if self.preset != "auto" and self.preset not in IDC_PRESETS:
            raise ValueError(f"preset must be auto or one of {sorted(IDC_PRESETS)}, got "
                             f"{self.preset!r}")
        if self.distance is not None and self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got "
                             f"{self.distance!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_real < 1 or self.batch_syn_max < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.inner_loop < 1 or self.reinit_every < 1:
            raise ValueError("inner_loop and reinit_every must be >= 1")
        if self.mix_p is not None and not 0 <= self.mix_p <= 1:
            raise ValueError(f"mix_p must be in [0, 1], got {self.mix_p}")
        if (self.n_data is not None and self.n_data < 0) or (
                self.early_epochs is not None and self.early_epochs < 0):
            raise ValueError("n_data and early_epochs must be >= 0")


def cutmix(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                  float]:
    """CutMix (Yun et al. 2019) as IDC trains with it: a box of area ≈ (1 − λ), λ ~ U(0, 1),
    centred uniformly and clipped at the borders, is pasted from a random permutation of the
    batch. Returns (mixed images, partner index, weight of the original labels)."""
    n, _, h, w = x.shape
    lam = torch.rand((), generator=generator).item()
    partner = torch.randperm(n, generator=generator).to(x.device)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (), generator=generator))
    cx = int(torch.randint(w, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
    return mixed, partner, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


@CONDENSERS.register("idc")
@dataclass(frozen=True)
class IDC:
    matching: IDCMatchingConfig = field(default_factory=IDCMatchingConfig)
    factor: int | None = None  # None: iem.default_factor(resolution); 1: IDC-I
    iterations: int = IDC_ITERATIONS
    name: str = "idc"
    algorithm_version: ClassVar[int] = 1
    iterative: ClassVar[bool] = True

    def with_runtime(self, runtime: Runtime) -> IDC:
        return replace(self, matching=runtime.apply(self.matching))

    def condense(self, train: LabeledImages, ipc: int, *, normalization: Normalization,
                 seed: int, budget: Budget | None = None,
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
        factor = self.factor or default_factor(train.resolution)
        if factor > train.resolution // 4:
            raise ValueError(f"multi-formation factor {factor} is too large for "
                             f"{train.resolution} px images")
        return condense_idc(train, ipc, factor=factor, config=self.matching,
                            normalization=normalization, seed=seed,
                            budget=budget or Budget(iterations=self.iterations),
                            method=self.name, on_snapshot=on_snapshot, progress=progress,
                            execution=execution)


def condense_idc(train: LabeledImages, ipc: int, *, factor: int, config: IDCMatchingConfig,
                 normalization: Normalization, seed: int, budget: Budget, method: str = "idc",
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
    f = factor
    check_ipc(train, ipc)
    try:
        check_ipc(train, ipc * f * f)
    except ValueError as e:
        raise ValueError(f"multi-formation with f={f} initialises every class from ipc·f² = "
                         f"{ipc * f * f} real images: {e}") from None
    device = resolve_device(config.device)
    amp = resolve_precision(config.precision, device)
    num_classes, res, channels = len(train.classes), train.resolution, train.channels
    preset_name, preset = preset_for(config.preset, res)
    distance = config.distance or preset.distance
    lr = config.lr or tuned_image_lr(preset.lr, ipc, res, preset.base_size)
    n_data = preset.n_data if config.n_data is None else config.n_data
    mix_p = preset.mix_p if config.mix_p is None else config.mix_p
    early = preset.early_epochs if config.early_epochs is None else config.early_epochs
    match_aug = config.aug
    train_aug = match_aug
    if match_aug is not None and mix_p > 0:  # CutMix replaces cutout in network training
        kept = [fam for fam in match_aug.families if fam != "cutout"]
        train_aug = replace(match_aug, strategy="_".join(kept) or "none")
    generator = torch.Generator().manual_seed(seed)

    members = [torch.nonzero(train.labels == c).flatten() for c in range(num_classes)]
    tiles = []
    for c in range(num_classes):
        pick = sample_without_replacement(members[c], ipc * f * f, generator)
        tiles.append(multi_formation_init(train.images[pick].float() / 255, f, res))
    stored = torch.cat(tiles).to(device).requires_grad_(True)  # pixels in [0, 1]
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    real = normalization.normalize(train.images).to(device)
    real_labels = train.labels.to(device)
    image_opt = torch.optim.SGD([stored], lr=lr, momentum=config.momentum)

    net = fresh_classifier(config.backbone, in_channels=channels, resolution=res,
                           num_classes=num_classes, seed=seed).to(device)
    forward = CompiledModule(net, resolve_compile(config.compile, device))  # first order only
    params = matched_parameters(net, config.min_param_dim)

    def class_step(c: int) -> float:
        x_real = real[sample_without_replacement(members[c], config.batch_real,
                                                 generator).to(device)]
        x_syn = multi_formation_decode(normalization.normalize_unit(stored[c * ipc:(c + 1) * ipc]),
                                       f, res)
        if x_syn.shape[0] > config.batch_syn_max:
            keep = torch.randperm(x_syn.shape[0], generator=generator)[:config.batch_syn_max]
            x_syn = x_syn[keep.to(device)]
        if match_aug is not None:  # one draw for both sides (IDC augments [real; syn] at once)
            shared = sample_dsa_params(match_aug, 1, generator=generator, siamese=True,
                                       height=res, width=res).to(device)
            x_real, x_syn = apply_dsa(x_real, shared), apply_dsa(x_syn, shared)
        with autocast(device, amp):
            real_logits, syn_logits = forward(x_real), net(x_syn)
        loss = match_loss(real_logits, torch.full((x_real.shape[0],), c, device=device),
                          syn_logits, torch.full((x_syn.shape[0],), c, device=device),
                          params, distance)
        image_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[stored])
        image_opt.step()
        return loss.item()

    def train_on_real(order: torch.Tensor, net_opt: torch.optim.Optimizer) -> None:
        for batch in order.split(config.batch_real):
            batch = batch.to(device)
            x, y = real[batch], real_labels[batch]
            with torch.no_grad():
                if train_aug is not None and train_aug.families:
                    x = apply_dsa(x, sample_dsa_params(
                        train_aug, x.shape[0], generator=generator, siamese=False, height=res,
                        width=res).to(device))
                mixed = torch.rand((), generator=generator).item() < mix_p
                if mixed:
                    x, partner, ratio = cutmix(x, generator)
            with autocast(device, amp):
                logits = forward(x).float()
            loss = F.cross_entropy(logits, y)
            if mixed:
                loss = loss * ratio + F.cross_entropy(logits, y[partner]) * (1.0 - ratio)
            net_opt.zero_grad(set_to_none=True)
            loss.backward()
            net_opt.step()

    def snapshot(iterations: int, steps: int, seconds: float) -> SyntheticSet:
        return SyntheticSet(
            images=normalization.normalize_unit(stored.detach().float()).cpu(),
            labels=labels.clone(), classes=train.classes, normalization=normalization,
            factor=f, resolution=res,
            metadata={"method": method, "ipc": ipc, "seed": seed, "iterations": iterations,
                      "steps": steps, "seconds": seconds, "factor": f, "preset": preset_name,
                      "lr": lr, "momentum": config.momentum, "distance": distance,
                      "min_param_dim": config.min_param_dim, "batch_real": config.batch_real,
                      "batch_syn_max": config.batch_syn_max, "inner_loop": config.inner_loop,
                      "n_data": n_data, "net_lr": config.net_lr,
                      "net_momentum": config.net_momentum,
                      "net_weight_decay": config.net_weight_decay, "mix_p": mix_p,
                      "early_epochs": early, "reinit_every": config.reinit_every,
                      "aug": match_aug.strategy if match_aug else "none",
                      "backbone": config.backbone, "precision": str(amp or "fp32"),
                      "compile": config.compile, "compiled": forward.compiled},
        )

    n_real = len(real)
    steps_per_inner = math.ceil(n_data / config.batch_real)
    net_opt: torch.optim.Optimizer | None = None

    def iteration(it: int, out_of_time: Callable[[], bool]) -> tuple[float, int, bool]:
        nonlocal net_opt
        if it % config.reinit_every == 0 or net_opt is None:
            reinitialise_classifier(net, config.backbone, in_channels=channels,
                                    resolution=res, num_classes=num_classes,
                                    seed=seed * 1_000_003 + it)
            net_opt = new_net_opt()
            for _ in range(early):
                train_on_real(torch.randperm(n_real, generator=generator), net_opt)
        with torch.no_grad():
            stored.clamp_(0.0, 1.0)
        loss = float("nan")
        for k in range(config.inner_loop):
            loss = sum(class_step(c) for c in range(num_classes)) / num_classes
            if steps_per_inner:
                order = torch.randperm(n_real, generator=generator)
                train_on_real(order[:steps_per_inner * config.batch_real], net_opt)
            if out_of_time():
                return loss, k + 1, False
        return loss, config.inner_loop, True

    def new_net_opt() -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=config.net_lr, momentum=config.net_momentum,
                               weight_decay=config.net_weight_decay)

    def save_state() -> dict[str, torch.Tensor]:
        """Pixels as stored (the set holds them normalised), their momentum, the generator,
        and the network with its optimiser: it lives for ``reinit_every`` iterations."""
        state = {"stored": stored.detach(), "generator_state": generator.get_state()}
        buffer = image_opt.state.get(stored, {}).get("momentum_buffer")
        if buffer is not None:
            state["momentum_buffer"] = buffer
        if net_opt is not None:
            state.update({f"net.{k}": v for k, v in net.state_dict().items()})
            for i, p in enumerate(net.parameters()):
                b = net_opt.state.get(p, {}).get("momentum_buffer")
                if b is not None:
                    state[f"net_momentum.{i}"] = b
        return state

    def restore(images: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        nonlocal net_opt
        with torch.no_grad():
            stored.copy_(state["stored"].to(device))
        generator.set_state(state["generator_state"])
        if "momentum_buffer" in state:
            image_opt.state[stored]["momentum_buffer"] = state["momentum_buffer"].to(device)
        weights = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        if weights:
            net.load_state_dict(weights)
            net_opt = new_net_opt()
            for i, p in enumerate(net.parameters()):
                if f"net_momentum.{i}" in state:
                    net_opt.state[p]["momentum_buffer"] = state[f"net_momentum.{i}"].to(device)

    return run_budgeted(budget, iteration, snapshot=snapshot, on_snapshot=on_snapshot,
                        desc=f"condense {method} ipc={ipc}", progress=progress,
                        execution=execution, resumable=Resumable(save_state, restore))
