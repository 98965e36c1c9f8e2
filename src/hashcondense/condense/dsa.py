"""DSA — Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

Gradient matching (DC) under siamese augmentation. One iteration: a freshly initialised
network (ConvNet-3 up to 32 px, ResNetAP-10 above, plus a linear classifier); then
``outer_loop`` times: for every class, a real batch (256) and the class's synthetic images get
the same DSA draw, and the layer-wise distance Σ (1 − cos) per output neuron between their
cross-entropy gradients (1-D parameters ignored) is summed over classes for one SGD step on the
images (lr 0.1, momentum 0.5); unless it was the last outer step, the network is then trained
for ``inner_loop`` epochs on the current synthetic set (plain SGD lr 0.01, batch 256, per-sample
DSA). (outer, inner) = (1, 1), (10, 50), (50, 10) at ipc 1, 10, 50 (the reference table, which
also has ipc 20/30/40; another ipc takes the entry of the nearest tabulated one, the smaller on
a tie). Real-image initialisation, as the reference README's DSA command (``--init real``).

Differences from the reference, all deliberate:
- networks have no BatchNorm, so the reference's BN-statistics freeze step never applies;
- randomness comes from seeded generators (the reference seeds the siamese draw from the
  clock); each class still gets its own draw, so its own augmentation family in mode "S";
- a wall-clock budget is checked after every image step, so a run may end inside an iteration
  (metadata ``steps`` counts image steps; ``iterations`` counts completed iterations).

``compile``: torch.compile (AOTAutograd) cannot differentiate twice, so the synthetic branch,
whose gradient is itself differentiated, always runs eagerly; ``compile`` applies to the
first-order passes only — the real-batch gradients and the inner-loop network training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..augment import DSAConfig, DSAParams, apply_dsa, sample_dsa_params
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
from ..synthetic import SyntheticSet
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
from .matching import initial_synthetic

DSA_ITERATIONS = 1_000  # the reference budget; pass a smaller Budget on a CPU
#: ipc → (outer_loop, inner_loop), the reference's get_loops table
DSA_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10),
}
INITS = ("real", "noise")


def dsa_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for ``ipc``: the table's entry, else the nearest tabulated ipc's
    (the smaller on a tie)."""
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    return DSA_LOOPS[min(DSA_LOOPS, key=lambda k: (abs(k - ipc), k))]


@dataclass(frozen=True)
class DSAMatchingConfig:
    """Hyperparameters of the DSA loop (defaults: the reference's)."""

    lr: float = 0.1  # image SGD
    momentum: float = 0.5
    lr_net: float = 0.01  # inner-loop SGD, no momentum, no weight decay
    batch_real: int = 256  # per class
    batch_train: int = 256  # inner-loop batches of synthetic images
    outer_loop: int | None = None  # None: dsa_loops(ipc)
    inner_loop: int | None = None
    distance: str = "layerwise_cos"
    min_param_dim: int = 2  # biases and norm parameters are not matched
    dsa: DSAConfig | None = field(default_factory=DSAConfig)  # None: DC (no augmentation)
    init: str = "real"  # "noise": N(0, 1) in normalised space
    backbone: str = "auto"
    precision: str = "auto"
    device: str = "auto"
    compile: str = "off"  # first-order passes only (see the module docstring)

    def __post_init__(self) -> None:
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {COMPILES}, got {self.compile!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got "
                             f"{self.distance!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not (self.lr > 0 and self.lr_net > 0):
            raise ValueError(f"learning rates must be positive, got {self.lr}, {self.lr_net}")
        if self.batch_real < 1 or self.batch_train < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.outer_loop is not None and self.outer_loop < 1:
            raise ValueError(f"outer_loop must be >= 1, got {self.outer_loop}")
        if self.inner_loop is not None and self.inner_loop < 0:
            raise ValueError(f"inner_loop must be >= 0, got {self.inner_loop}")


@CONDENSERS.register("dsa")
@dataclass(frozen=True)
class DSA:
    matching: DSAMatchingConfig = field(default_factory=DSAMatchingConfig)
    iterations: int = DSA_ITERATIONS
    name: str = "dsa"
    algorithm_version: ClassVar[int] = 1
    iterative: ClassVar[bool] = True

    def with_runtime(self, runtime: Runtime) -> DSA:
        return replace(self, matching=runtime.apply(self.matching))

    def condense(self, train: LabeledImages, ipc: int, *, normalization: Normalization,
                 seed: int, budget: Budget | None = None,
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
        return condense_dsa(train, ipc, config=self.matching, normalization=normalization,
                            seed=seed, budget=budget or Budget(iterations=self.iterations),
                            method=self.name, on_snapshot=on_snapshot, progress=progress,
                            execution=execution)


def condense_dsa(train: LabeledImages, ipc: int, *, config: DSAMatchingConfig,
                 normalization: Normalization, seed: int, budget: Budget, method: str = "dsa",
                 on_snapshot: SnapshotCallback | None = None,
                 progress: bool = True, execution: Execution | None = None) -> SyntheticSet:
    check_ipc(train, ipc)
    device = resolve_device(config.device)
    amp = resolve_precision(config.precision, device)
    num_classes, res, channels = len(train.classes), train.resolution, train.channels
    default_outer, default_inner = dsa_loops(ipc)
    outer = config.outer_loop or default_outer
    inner = default_inner if config.inner_loop is None else config.inner_loop
    generator = torch.Generator().manual_seed(seed)

    if config.init == "real":
        stored, labels = initial_synthetic(train, ipc, 1, normalization, generator)
    else:
        stored = torch.randn(num_classes * ipc, channels, res, res, generator=generator)
        labels = torch.arange(num_classes).repeat_interleave(ipc)
    stored = stored.to(device).requires_grad_(True)
    syn_labels = labels.to(device)
    real = normalization.normalize(train.images).to(device)
    members = [torch.nonzero(train.labels == c).flatten() for c in range(num_classes)]
    image_opt = torch.optim.SGD([stored], lr=config.lr, momentum=config.momentum)

    net = fresh_classifier(config.backbone, in_channels=channels, resolution=res,
                           num_classes=num_classes, seed=seed).to(device)
    forward = CompiledModule(net, resolve_compile(config.compile, device))  # first order only
    params = matched_parameters(net, config.min_param_dim)

    def augment(x: torch.Tensor, shared: DSAParams | None = None) -> torch.Tensor:
        """``shared``: a siamese draw; None: per-sample parameters (network training)."""
        if config.dsa is None:
            return x
        if shared is None:
            shared = sample_dsa_params(config.dsa, x.shape[0], generator=generator,
                                       siamese=False, height=res, width=res)
        return apply_dsa(x, shared.to(device))

    def image_step() -> float:
        total = None
        for c in range(num_classes):
            x_real = real[sample_without_replacement(members[c], config.batch_real,
                                                     generator).to(device)]
            x_syn = stored[c * ipc:(c + 1) * ipc]
            if config.dsa is not None:  # one siamese draw per class, as the reference
                shared = sample_dsa_params(config.dsa, 1, generator=generator, siamese=True,
                                           height=res, width=res)
                x_real, x_syn = augment(x_real, shared), augment(x_syn, shared)
            with autocast(device, amp):
                real_logits, syn_logits = forward(x_real), net(x_syn)
            y = syn_labels[c * ipc:(c + 1) * ipc]
            loss = match_loss(real_logits, torch.full((x_real.shape[0],), c, device=device),
                              syn_logits, y, params, config.distance)
            total = loss if total is None else total + loss
        assert total is not None
        image_opt.zero_grad(set_to_none=True)
        total.backward(inputs=[stored])
        image_opt.step()
        return total.item()

    def train_network(net_opt: torch.optim.Optimizer) -> None:
        data = stored.detach().clone()
        for _ in range(inner):
            for batch in torch.randperm(len(data), generator=generator).split(config.batch_train):
                batch = batch.to(device)
                with torch.no_grad():
                    x = augment(data[batch])
                with autocast(device, amp):
                    logits = forward(x)
                loss = F.cross_entropy(logits.float(), syn_labels[batch])
                net_opt.zero_grad(set_to_none=True)
                loss.backward()
                net_opt.step()

    def snapshot(iterations: int, steps: int, seconds: float) -> SyntheticSet:
        return SyntheticSet(
            images=stored.detach().float().cpu().clone(), labels=labels.clone(),
            classes=train.classes, normalization=normalization, factor=1, resolution=res,
            metadata={"method": method, "ipc": ipc, "seed": seed, "iterations": iterations,
                      "steps": steps, "seconds": seconds, "lr": config.lr,
                      "momentum": config.momentum, "lr_net": config.lr_net,
                      "batch_real": config.batch_real, "batch_train": config.batch_train,
                      "outer_loop": outer, "inner_loop": inner, "distance": config.distance,
                      "min_param_dim": config.min_param_dim, "init": config.init,
                      "backbone": config.backbone, "precision": str(amp or "fp32"),
                      "compile": config.compile, "compiled": forward.compiled,
                      "dsa": config.dsa.strategy if config.dsa else "none"},
        )

    def iteration(it: int, out_of_time: Callable[[], bool]) -> tuple[float, int, bool]:
        reinitialise_classifier(net, config.backbone, in_channels=channels, resolution=res,
                                num_classes=num_classes, seed=seed * 1_000_003 + it)
        net_opt = torch.optim.SGD(net.parameters(), lr=config.lr_net)
        loss = float("nan")
        for ol in range(outer):
            loss = image_step()
            if out_of_time():
                return loss, ol + 1, False
            if ol < outer - 1:
                train_network(net_opt)
        return loss, outer, True

    def save_state() -> dict[str, torch.Tensor]:
        """The network is re-initialised every iteration: images, momentum and the one
        generator are the whole state at an iteration boundary."""
        state = {"generator_state": generator.get_state()}
        buffer = image_opt.state.get(stored, {}).get("momentum_buffer")
        if buffer is not None:
            state["momentum_buffer"] = buffer
        return state

    def restore(images: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            stored.copy_(images.to(device))
        generator.set_state(state["generator_state"])
        if "momentum_buffer" in state:
            image_opt.state[stored]["momentum_buffer"] = state["momentum_buffer"].to(device)

    return run_budgeted(budget, iteration, snapshot=snapshot, on_snapshot=on_snapshot,
                        desc=f"condense {method} ipc={ipc}", progress=progress,
                        execution=execution, resumable=Resumable(save_state, restore))
