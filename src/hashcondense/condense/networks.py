"""Which network embeds the images at each update of distribution matching.

DM and IEM as published draw a freshly initialised network for every update. IDC (Kim et al.
2022, whose multi-formation IEM adopts) instead keeps one network for an outer iteration of
``inner_loop`` updates and trains it on *real* images between them, so the synthetic set is
matched under networks at every stage of training, not only at initialisation; IDM (Zhao et
al. 2023) makes the same move for DM. :class:`TrainedNetworks` is that schedule for the
matching loop: every ``inner_loop`` updates a fresh network (from the iteration's seed) and a
linear classifier head; after every update ``steps`` SGD steps of cross-entropy on ``batch``
real images of all classes, each image augmented on its own (``augment``: IDC's per-sample
DiffAug families without cutout; IDC's CutMix is not applied). IEM's weight perturbation
(Eq. 4) is applied to a copy of the trained weights for the matching step only, so the
perturbation never accumulates in the trained network, and the trained network's path depends
on the seed and the real images alone, never on the synthetic set.

With ``interpolate`` (DANCE, Zhang et al. 2024) the matching network of an update is a point
drawn uniformly on the segment between the outer iteration's initial weights and the trained
ones, θ = λ·θ_init + (1 − λ)·θ_trained with λ ~ U(0, 1), so the matched stages of training
are spread evenly rather than following one trajectory; the initial weights are redrawn from
the outer iteration's seed, not stored.

Every draw comes from the counter-based streams (``streams.py``) and the trained weights and
momentum buffers travel in checkpoints, so a resumed run is bit-identical to an uninterrupted
one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import DSAConfig, apply_dsa, sample_dsa_params
from ..normalization import Normalization
from ..runtime import autocast
from .streams import stream


@dataclass(frozen=True)
class TrainedNetworks:
    """IDC's schedule: ``inner_loop`` updates per network (IDC: 100), ``steps`` SGD steps on
    ``batch`` real images after each update (IDC: n_data 2,000 at batch 64 = 32 steps on
    CIFAR), its net optimiser (SGD lr 0.01, momentum 0.9, weight decay 5e-4); ``augment``
    per training image (None: none)."""

    inner_loop: int = 100
    steps: int = 1
    batch: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: DSAConfig | None = field(
        default_factory=lambda: DSAConfig(strategy="color_crop_flip_scale_rotate", mode="M"))
    interpolate: bool = False  # DANCE: match under λ·θ_init + (1 − λ)·θ_trained, λ ~ U(0, 1)

    def __post_init__(self) -> None:
        for name in ("inner_loop", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"trained_networks.{name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"trained_networks.lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"trained_networks.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"trained_networks.weight_decay must be >= 0, got "
                             f"{self.weight_decay}")


class NetworkTrainer:
    """The network a :class:`TrainedNetworks` schedule trains on ``images`` (uint8, every
    class, with ``labels``): ``base`` (the backbone) and a linear ``head`` with their SGD
    state. :meth:`fresh` starts a network from the outer iteration's initialisation;
    :meth:`train` takes the steps after an update."""

    def __init__(self, schedule: TrainedNetworks, base: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor, normalization: Normalization, num_classes: int) -> None:
        self.schedule = schedule
        self.images, self.labels, self.normalization = images, labels, normalization
        self.base = base.requires_grad_(True)
        with torch.random.fork_rng(devices=[]):  # Linear's init draws from the global RNG
            self.head = nn.Linear(base.feature_dim, num_classes)
        self.head.to(images.device)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=schedule.lr,
                                         momentum=schedule.momentum,
                                         weight_decay=schedule.weight_decay)

    def parameters(self) -> list[nn.Parameter]:
        """Backbone then head: the order of the checkpoint's tensors."""
        return [*self.base.parameters(), *self.head.parameters()]

    def starts_network(self, iteration: int) -> bool:
        """Whether update ``iteration`` begins a new network (every ``inner_loop``)."""
        return iteration % self.schedule.inner_loop == 0

    @torch.no_grad()
    def fresh(self, weights: nn.Module, generator: torch.Generator) -> None:
        """Start a network: ``weights``' parameters, a head drawn from ``generator`` with
        nn.Linear's own initialisation range, no momentum."""
        for target, value in zip(self.base.parameters(), weights.parameters(), strict=True):
            target.copy_(value)
        bound = 1.0 / self.head.in_features ** 0.5  # nn.Linear's own initialisation range
        for p in self.head.parameters():
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
        self.optimizer.state.clear()

    def start_of(self, iteration: int) -> int:
        """The update at which ``iteration``'s network began (its initialisation's seed)."""
        return iteration - iteration % self.schedule.inner_loop

    @torch.no_grad()
    def copy_into(self, net: nn.Module, mix: float | None = None) -> None:
        """Give the matching network the trained backbone's current weights; with ``mix`` = λ,
        ``net`` holds the initial weights and becomes λ·θ_init + (1 − λ)·θ_trained."""
        for target, value in zip(net.parameters(), self.base.parameters(), strict=True):
            if mix is None:
                target.copy_(value)
            else:
                target.mul_(mix).add_(value, alpha=1.0 - mix)

    def train(self, *, seed: int, iteration: int, amp: torch.dtype | None) -> torch.Tensor:
        """``steps`` SGD steps, each on ``batch`` distinct real images drawn (with their
        augmentation) from the (seed, iteration, step) stream; the last step's loss."""
        device, res = self.images.device, self.images.shape[-1]
        augment = self.schedule.augment
        loss = torch.zeros(())
        for k in range(self.schedule.steps):
            g = stream(seed, "net-train", iteration, k)
            pick = torch.randperm(len(self.images), generator=g)[:self.schedule.batch]
            pick = pick.to(device)
            x = self.normalization.normalize(self.images[pick])
            if augment is not None and augment.families:
                params = sample_dsa_params(augment, len(pick), generator=g, siamese=False,
                                           height=res, width=res).to(device)
                x = apply_dsa(x, params)
            with autocast(device, amp):
                logits = self.head(self.base(x).float())
            loss = F.cross_entropy(logits.float(), self.labels[pick])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def state(self) -> dict[str, torch.Tensor]:
        """Weights and momentum buffers as named tensors, for a checkpoint."""
        out = {}
        for i, p in enumerate(self.parameters()):
            out[f"trained_net.{i}"] = p.detach().clone()
            buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                out[f"trained_net_momentum.{i}"] = buffer.clone()
        return out

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` saved (a checkpoint of a run with this schedule)."""
        self.optimizer.state.clear()
        for i, p in enumerate(self.parameters()):
            key = f"trained_net.{i}"
            if key not in state:
                raise ValueError(f"checkpoint has no {key}: it was not written by a run with "
                                 "trained_networks")
            p.copy_(state[key].to(p.device))
            buffer = state.get(f"trained_net_momentum.{i}")
            if buffer is not None:
                self.optimizer.state[p]["momentum_buffer"] = buffer.to(p.device).clone()
