"""Which network embeds the images at each update of distribution matching.

DM and IEM as published draw a freshly initialised network for every update. IDC (Kim et al.
2022, whose multi-formation IEM adopts) instead keeps one network for an outer iteration of
``inner_loop`` updates and trains it on *real* images between them, so the synthetic set is
matched under networks at every stage of training, not only at initialisation; IDM (Zhao et
al. 2023) makes the same move for DM. :class:`TrainedNetworks` is that schedule for the
matching loop: every ``inner_loop`` updates a fresh network (from the iteration's seed) and a
linear classifier head; after every update ``steps`` SGD steps of cross-entropy on ``batch``
real images of all classes (DSA-augmented per sample). IEM's weight perturbation (Eq. 4) is
applied to a copy of the trained weights for the matching step only, so the perturbation never
accumulates in the trained network.

Every draw comes from the counter-based streams (``streams.py``) and the trained weights and
momentum buffers travel in checkpoints, so a resumed run is bit-identical to an uninterrupted
one.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    CIFAR), its net optimiser (SGD lr 0.01, momentum 0.9, weight decay 5e-4)."""

    inner_loop: int = 100
    steps: int = 1
    batch: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        for name in ("inner_loop", "steps", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"trained_networks.{name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"trained_networks.lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("trained_networks: need 0 <= momentum < 1 and weight_decay >= 0")


class NetworkTrainer:
    """The network a :class:`TrainedNetworks` schedule trains: ``base`` (the backbone) and a
    linear ``head`` with their SGD state. ``fresh`` is called with a network initialised from
    the outer iteration's seed; :meth:`train` takes the steps after an update."""

    def __init__(self, schedule: TrainedNetworks, base: nn.Module, num_classes: int) -> None:
        self.schedule = schedule
        self.base = base.requires_grad_(True)
        self.head = nn.Linear(base.feature_dim, num_classes).to(next(base.parameters()).device)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=schedule.lr,
                                         momentum=schedule.momentum,
                                         weight_decay=schedule.weight_decay)

    def parameters(self) -> list[nn.Parameter]:
        return [*self.base.parameters(), *self.head.parameters()]

    def starts_network(self, iteration: int) -> bool:
        return iteration % self.schedule.inner_loop == 0

    @torch.no_grad()
    def fresh(self, weights: nn.Module, seed: int) -> None:
        """Start a network: ``weights``' parameters, a head from ``seed``, no momentum."""
        for target, value in zip(self.base.parameters(), weights.parameters(), strict=True):
            target.copy_(value)
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / self.head.in_features ** 0.5  # nn.Linear's own initialisation range
        for p in self.head.parameters():
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        self.optimizer.state.clear()

    @torch.no_grad()
    def copy_into(self, net: nn.Module) -> None:
        """Give the matching network the trained backbone's current weights."""
        for target, value in zip(net.parameters(), self.base.parameters(), strict=True):
            target.copy_(value)

    def train(self, images: torch.Tensor, labels: torch.Tensor, normalization: Normalization,
              dsa: DSAConfig | None, *, seed: int, iteration: int,
              amp: torch.dtype | None) -> float:
        """``steps`` SGD steps on random real batches (uint8 ``images``, all classes) drawn
        from the (seed, iteration, step) stream; the last step's loss."""
        device = images.device
        loss = torch.zeros(())
        res = images.shape[-1]
        for k in range(self.schedule.steps):
            g = stream(seed, "net-train", iteration, k)
            pick = torch.randint(len(images), (self.schedule.batch,), generator=g).to(device)
            x = normalization.normalize(images[pick])
            if dsa is not None:
                params = sample_dsa_params(dsa, len(pick), generator=g, siamese=False,
                                           height=res, width=res).to(device)
                x = apply_dsa(x, params)
            with autocast(device, amp):
                logits = self.head(self.base(x).float())
            loss = F.cross_entropy(logits.float(), labels[pick])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

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
