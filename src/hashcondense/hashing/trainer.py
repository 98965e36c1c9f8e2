"""Train a hashing network on any labelled image tensor set (a real subset or a synthetic set).

One loop for every ``HashMethod``: sample a mini-batch, make a weak view (and a strong view for
two-view methods such as DHD) with tensor-level augmentation, compute the continuous codes and let
the method turn them into a loss. Deterministic under a seed on a given machine and precision.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..augment import DSAConfig, apply_cutmix, dsa, sample_cutmix
from ..models import HashingNetwork, build_backbone
from ..models.hashing import sign_codes
from ..runtime import (
    CompiledModule,
    autocast,
    chunked_forward,
    pad_batch,
    resolve_compile,
    resolve_device,
    resolve_precision,
)
from ..settings import COMPILES, DSA_MODES
from . import training_state
from .base import HashBatch, HashMethod
from .training_state import TrainCheckpointing

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
# how a run computes, not what: a checkpoint moves across them (compiled kernels round a little
# differently from eager ones; the runner treats the two as one cell, and so does a resume)
RUN_ONLY = ("device", "compile")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for training a hashing network; defaults are the calibrated CPU recipe.

    Tiny sets follow the dataset-condensation convention (many epochs, DSA augmentation on every
    batch); ``min_steps`` keeps the number of optimiser steps sane whatever the set size.
    """

    epochs: int = 300
    min_steps: int = 0
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0
    weight_decay: float = 1e-5
    momentum: float = 0.9
    schedule: str = "cosine"
    weak_augment: str = "crop_flip"
    strong_augment: str = "color_crop_cutout_flip_scale_rotate"
    # how the strong view composes its families: "S" one per batch; "C" IDC's evaluation
    # (flip and colour on every image, then one of the other listed families, crop/scale/rotate
    # by default, cutout last); "M" all in turn
    strong_augment_mode: str = "S"
    # CutMix on this share of batches, after the views' augmentation (IDC's evaluation of
    # multi-formation sets: p 0.5, beta 1); 0 = off
    cutmix: float = 0.0
    cutmix_beta: float = 1.0
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = False
    compile: str = "off"  # "auto": torch.compile where it can run; pays off beyond ~300 steps

    def __post_init__(self) -> None:
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {COMPILES}, got {self.compile!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.cutmix <= 1.0:
            raise ValueError(f"cutmix must be a probability in [0, 1], got {self.cutmix}")
        if not self.cutmix_beta > 0:
            raise ValueError(f"cutmix_beta must be positive, got {self.cutmix_beta}")
        if self.strong_augment_mode not in DSA_MODES:
            raise ValueError(f"strong_augment_mode must be one of {', '.join(DSA_MODES)}, got "
                             f"{self.strong_augment_mode!r}")
        for aug in (self.weak_augment, self.strong_augment):
            if aug != "none":
                DSAConfig(strategy=aug)  # validates the family names early

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: HashingNetwork
    seconds: float
    epochs: int
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    epoch_seconds: list[float] = field(default_factory=list)  # wall time per epoch
    resumed_from: int | None = None  # the epoch a resumed run started at


def _augmenter(strategy: str, mode: str):
    if strategy == "none":
        return lambda x, g: x
    config = DSAConfig(strategy=strategy, mode=mode)
    return lambda x, g: dsa(x, config, generator=g, siamese=False)


def build_hashing_network(
    method: HashMethod,
    *,
    backbone: str,
    bits: int,
    num_classes: int,
    in_channels: int,
    resolution: int,
    seed: int,
) -> HashingNetwork:
    """A freshly initialised backbone + the method's head, initialised from ``seed``."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_backbone(backbone, in_channels=in_channels, resolution=resolution)
        head = method.make_head(net.feature_dim, bits, num_classes)
    return HashingNetwork(net, head)


def _optimizer(model: HashingNetwork, config: TrainConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": model.backbone.parameters(), "lr": config.lr * config.backbone_lr_scale},
        {"params": model.head.parameters(), "lr": config.lr},
    ]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay)


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "step":  # DC convention: ×0.1 once, at half of training
        return 0.1 if step >= total // 2 else 1.0
    return 1.0


def train_hashing_network(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    method: HashMethod,
    bits: int,
    num_classes: int,
    backbone: str = "convnet3",
    config: TrainConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoints: TrainCheckpointing | None = None,
) -> TrainResult:
    """Train on normalised float images (N, C, R, R) with int labels (N,) in [0, num_classes).

    ``checkpoints``: save the state at epoch ends and resume from the folder's checkpoint of
    this same run (images, labels, recipe, seed, method, bits); the folder is the caller's to
    remove once the result is safe.
    """
    config = config or TrainConfig()
    if images.ndim != 4 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(
            f"images must be (N, C, R, R) with N = len(labels) > 0, got {tuple(images.shape)}"
            f" and {tuple(labels.shape)} labels"
        )
    if not images.is_floating_point():
        raise ValueError("images must be normalised floats (use Normalization.normalize)")
    device = resolve_device(config.device)
    amp_dtype = resolve_precision(config.precision, device)
    model = build_hashing_network(
        method,
        backbone=backbone,
        bits=bits,
        num_classes=num_classes,
        in_channels=images.shape[1],
        resolution=images.shape[-1],
        seed=seed,
    ).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    run = "" if checkpoints is None else training_state.fingerprint(
        {"config": {k: v for k, v in config.to_dict().items() if k not in RUN_ONLY},
         "method": {"name": method.name, **vars(method)}, "bits": bits,
         "num_classes": num_classes, "backbone": backbone, "seed": seed,
         "device": device.type, "dtype": str(amp_dtype)}, images, labels)
    images = images.to(device)
    labels = labels.to(device=device, dtype=torch.long)
    optimizer = _optimizer(model, config)
    forward = CompiledModule(model, resolve_compile(config.compile, device))
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    weak = _augmenter(config.weak_augment, "M")
    strong = _augmenter(config.strong_augment, config.strong_augment_mode)
    generator = torch.Generator(device=device).manual_seed(seed + 1_000_003)

    n = images.shape[0]
    batch_size = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    total = epochs * steps_per_epoch
    position = training_state.TrainPosition(epoch=0, step=0, seconds=0.0)
    if checkpoints is not None and checkpoints.resume:
        if (found := training_state.latest(checkpoints.directory, run)) is not None:
            position, tensors, scalars = found
            training_state.restore(tensors, scalars, model, optimizer, generator)
            log.info("train %s %d-bit: resuming at epoch %d/%d (%.0fs done) from %s",
                     method.name, bits, position.epoch, epochs, position.seconds,
                     checkpoints.directory)
    losses, epoch_seconds, step = position.losses, position.epoch_seconds, position.step
    resumed_from = position.epoch or None
    start = time.perf_counter() - position.seconds
    last_save = time.perf_counter()
    model.train()
    bar = tqdm(range(position.epoch, epochs), desc=f"train {method.name} {bits}b",
               leave=False, initial=position.epoch, total=epochs,
               disable=None if progress else True)
    for epoch in bar:
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=generator, device=device)
        epoch_loss = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, y = images[idx], labels[idx]
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * _lr_factor(config.schedule, step, total)
            with autocast(device, amp_dtype):
                views = [weak(x, generator)]
                if method.two_views:
                    views.append(strong(x, generator))
                mix = None
                if config.cutmix > 0 and float(torch.rand(
                        (), generator=generator, device=device)) < config.cutmix:
                    mix = sample_cutmix(len(y), x.shape[2], x.shape[3],
                                        beta=config.cutmix_beta, generator=generator)
                    views = [apply_cutmix(v, mix) for v in views]  # one box for both views
                codes = forward(torch.cat(views).contiguous(memory_format=memory_format))
                strong_codes = codes[len(y):] if method.two_views else None
                loss = method.loss(HashBatch(codes[: len(y)], strong_codes, y), model.head)
                if mix is not None:  # each label weighted by its image's share of the area;
                    # label-free terms keep weight ratio + (1 - ratio) = 1
                    y_mix = y[mix.perm.to(device)]
                    loss = mix.ratio * loss + (1 - mix.ratio) * method.loss(
                        HashBatch(codes[: len(y)], strong_codes, y_mix), model.head)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
            step += 1
        losses.append(epoch_loss / steps_per_epoch)
        epoch_seconds.append(time.perf_counter() - epoch_start)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (epoch + 1) % max(1, epochs // 10) == 0:  # a heartbeat for logs without a TTY
            log.info("epoch %d/%d loss %.4f (%.0fs)", epoch + 1, epochs, losses[-1],
                     time.perf_counter() - start)
        if checkpoints is not None and epoch + 1 < epochs and (
                (checkpoints.every_epochs and (epoch + 1) % checkpoints.every_epochs == 0)
                or (checkpoints.every_seconds
                    and time.perf_counter() - last_save >= checkpoints.every_seconds)):
            tensors, scalars = training_state.capture(model, optimizer, generator)
            training_state.save(checkpoints.directory, run, training_state.TrainPosition(
                epoch + 1, step, time.perf_counter() - start, losses, epoch_seconds),
                tensors, scalars)
            last_save = time.perf_counter()
    seconds = time.perf_counter() - start
    log.info("trained %s %d-bit on %d images: %d epochs in %.1fs", method.name, bits, n,
             epochs, seconds)
    model.eval()
    return TrainResult(model=model, seconds=seconds, epochs=epochs, steps=step, losses=losses,
                       epoch_seconds=epoch_seconds, resumed_from=resumed_from)


@torch.no_grad()
def eval_outputs(
    model: torch.nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    *,
    index: np.ndarray | None = None,
    batch_size: int = 500,
    chunk: int | None = None,
    precision: str = "auto",
    compile: str = "off",
    progress: bool = False,
    desc: str = "encode",
    empty_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``reduce`` of the eval-mode outputs for uint8 ``images`` (``images[index]`` when given).

    One loop for every consumer of a trained network (codes, class predictions), so memory stays
    bounded the same way: only ``batch_size`` images are normalised at once, each batch forwards
    in ``chunk``-image pieces (one piece when None), and under compile every piece is padded to
    one size so a single static kernel serves them all (eval mode: per-sample maths only).
    """
    device = next(model.parameters()).device
    amp_dtype = resolve_precision(precision, device)
    compiled = resolve_compile(compile, device)
    forward = CompiledModule(model, compiled)
    chunk = chunk or batch_size
    model.eval()
    n_total = images.shape[0] if index is None else len(index)
    out = []
    starts = range(0, n_total, batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=None if progress else True):
        part = (images[start : start + batch_size] if index is None
                else images[torch.as_tensor(index[start : start + batch_size])])
        x = normalize(part.to(device))
        n = x.shape[0]
        with autocast(device, amp_dtype):
            outputs = chunked_forward(forward, pad_batch(x, chunk) if compiled else x, chunk,
                                      pad=compiled)[:n]
            out.append(reduce(outputs).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=empty_dtype)


def encode_images(
    model: HashingNetwork,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 500,
    precision: str = "auto",
    compile: str = "off",
    progress: bool = False,
) -> torch.Tensor:
    """Binary codes (N, K) int8 in {-1, +1} of uint8 images, encoded in bounded-memory chunks.

    ``normalize`` maps a uint8 chunk to the model's input space (``Normalization.normalize``).
    Each chunk is one forward (padded to ``batch_size`` under compile).
    """
    return eval_outputs(model, images, normalize, sign_codes, batch_size=batch_size,
                        precision=precision, compile=compile, progress=progress,
                        empty_dtype=torch.int8)
