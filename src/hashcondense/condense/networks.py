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

With ``queue`` > 1 (IDM, Zhao et al. 2023) several networks live at once: a new one joins every
``inner_loop`` updates and the oldest leaves once ``queue`` are alive; each update matches under
one member drawn uniformly, then ``train_count`` distinct members take their training steps, so
the matched networks span many stages of training at every point of the run (IDM's CIFAR
settings: queue 100, a new network every 30 iterations, 2 members trained 10 steps each at
batch 256, without augmentation; IDM also starts with a few networks, adds a cross-entropy
term on the synthetic images and augments them otherwise, none of which is here). With
``queue`` = 1 this is the single-network schedule above, draw for draw.

With ``interpolate`` (DANCE, Zhang et al. 2024) the matching network of an update is a point
drawn uniformly on the segment between the matched member's initial weights and its trained
ones, θ = λ·θ_init + (1 − λ)·θ_trained with λ ~ U(0, 1), so the matched stages of training
are spread evenly rather than following one trajectory; the initial weights are redrawn from
the seed of the update the member joined at, not stored.

Every draw comes from the counter-based streams (``streams.py``) and the trained weights and
momentum buffers travel in checkpoints, so a resumed run is bit-identical to an uninterrupted
one.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """IDC's schedule: a new network every ``inner_loop`` updates (IDC: 100), ``steps`` SGD
    steps on ``batch`` real images after each update (IDC: n_data 2,000 at batch 64 = 32 steps
    on CIFAR), its net optimiser (SGD lr 0.01, momentum 0.9, weight decay 5e-4); ``augment``
    per training image (None: none). IDM's queue: ``queue`` networks alive at once,
    ``train_count`` of them trained after each update."""

    inner_loop: int = 100
    steps: int = 1
    batch: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: DSAConfig | None = field(
        default_factory=lambda: DSAConfig(strategy="color_crop_flip_scale_rotate", mode="M"))
    interpolate: bool = False  # DANCE: match under λ·θ_init + (1 − λ)·θ_trained, λ ~ U(0, 1)
    queue: int = 1  # IDM: networks alive at once (its net_num: 100)
    train_count: int = 1  # IDM: members trained after each update (its fetch_net_num: 2)

    def __post_init__(self) -> None:
        for name in ("inner_loop", "steps", "batch", "queue", "train_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"trained_networks.{name} must be an integer >= 1, got "
                                 f"{value!r}")
        if self.train_count > self.queue:
            raise ValueError(f"trained_networks.train_count ({self.train_count}) cannot exceed "
                             f"trained_networks.queue ({self.queue})")
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

    @torch.no_grad()
    def copy_into(self, net: nn.Module, mix: float | None = None) -> None:
        """Give the matching network the trained backbone's current weights; with ``mix`` = λ,
        ``net`` holds the initial weights and becomes λ·θ_init + (1 − λ)·θ_trained."""
        for target, value in zip(net.parameters(), self.base.parameters(), strict=True):
            if mix is None:
                target.copy_(value)
            else:
                target.mul_(mix).add_(value, alpha=1.0 - mix)

    def train(self, *, seed: int, iteration: int, amp: torch.dtype | None,
              slot: int = 0) -> torch.Tensor:
        """``steps`` SGD steps, each on ``batch`` distinct real images drawn (with their
        augmentation) from the (seed, iteration, step) stream — (…, step, slot) for the
        queue's second and later members trained at an update; the last step's loss."""
        device, res = self.images.device, self.images.shape[-1]
        augment = self.schedule.augment
        loss = torch.zeros(())
        for k in range(self.schedule.steps):
            g = stream(seed, "net-train", iteration, k, *((slot,) if slot else ()))
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

    def state(self, prefix: str = "trained_net") -> dict[str, torch.Tensor]:
        """Weights and momentum buffers as named tensors, for a checkpoint."""
        out = {}
        for i, p in enumerate(self.parameters()):
            out[f"{prefix}.{i}"] = p.detach().clone()
            buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                out[f"{prefix}_momentum.{i}"] = buffer.clone()
        return out

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor], prefix: str = "trained_net") -> None:
        """Restore what :meth:`state` saved (a checkpoint of a run with this schedule)."""
        self.optimizer.state.clear()
        for i, p in enumerate(self.parameters()):
            key = f"{prefix}.{i}"
            if key not in state:
                raise ValueError(f"checkpoint has no {key}: it was not written by a run with "
                                 "this trained_networks schedule")
            p.copy_(state[key].to(p.device))
            buffer = state.get(f"{prefix}_momentum.{i}")
            if buffer is not None:
                self.optimizer.state[p]["momentum_buffer"] = buffer.to(p.device).clone()


class NetworkQueue:
    """The networks alive under a :class:`TrainedNetworks` schedule, oldest first, each with
    the update it joined at. ``make`` builds a :class:`NetworkTrainer` (its weights are
    overwritten when it joins); ``initialise(net, iteration)`` gives ``net`` the initial
    weights of the network that joined at ``iteration``."""

    def __init__(self, schedule: TrainedNetworks, make: Callable[[], NetworkTrainer],
                 initialise: Callable[[nn.Module, int], None]) -> None:
        self.schedule, self.make, self.initialise = schedule, make, initialise
        self.members: list[tuple[int, NetworkTrainer]] = []

    def prepare(self, net: nn.Module, iteration: int, seed: int) -> None:
        """Before update ``iteration``: let a new network join when one is due (the oldest
        leaves a full queue), then give ``net`` the weights to match under."""
        if iteration % self.schedule.inner_loop == 0:
            self.initialise(net, iteration)
            trainer = self.make() if len(self.members) < self.schedule.queue else \
                self.members.pop(0)[1]  # the leaving network's buffers serve the new one
            trainer.fresh(net, stream(seed, "net-head", iteration))
            self.members.append((iteration, trainer))
        pick = 0 if len(self.members) == 1 else int(torch.randint(
            len(self.members), (), generator=stream(seed, "net-pick", iteration)).item())
        joined, chosen = self.members[pick]
        if joined == iteration:
            return  # ``net`` already holds the initial weights of the network that just joined
        if self.schedule.interpolate:
            self.initialise(net, joined)
            chosen.copy_into(net, torch.rand((), generator=stream(seed, "net-mix",
                                                                  iteration)).item())
        else:
            chosen.copy_into(net)

    def train(self, iteration: int, seed: int, amp: torch.dtype | None) -> None:
        """After update ``iteration``: ``train_count`` distinct members take their steps;
        a member about to leave the queue is not trained."""
        leaving = ((iteration + 1) % self.schedule.inner_loop == 0
                   and len(self.members) == self.schedule.queue)
        candidates = self.members[1:] if leaving else self.members
        count = min(self.schedule.train_count, len(candidates))
        if count == len(candidates):
            chosen = candidates
        else:
            order = torch.randperm(len(candidates), generator=stream(seed, "net-pick-train",
                                                                     iteration))
            chosen = [candidates[int(k)] for k in order[:count]]
        for slot, (_, trainer) in enumerate(chosen):
            trainer.train(seed=seed, iteration=iteration, amp=amp, slot=slot)

    def state(self) -> dict[str, torch.Tensor]:
        """Every member's weights and momentum (the oldest under the single network's keys)
        and the updates they joined at."""
        out = {"trained_net_joined": torch.tensor([j for j, _ in self.members])}
        for k, (_, trainer) in enumerate(self.members):
            out.update(trainer.state("trained_net" if k == 0 else f"trained_net{k}"))
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the queue a checkpoint holds."""
        if "trained_net_joined" in state:
            joins = state["trained_net_joined"].tolist()
        elif ("trained_net.0" in state and self.schedule.queue == 1
              and not self.schedule.interpolate):
            joins = [-1]  # a single-network checkpoint from before the queue: its join is unused
        else:
            raise ValueError("checkpoint has no trained_net_joined: it was not written by a run "
                             "with trained_networks queue/interpolate")
        self.members = []
        for k, joined in enumerate(joins):
            trainer = self.make()
            trainer.load_state(state, "trained_net" if k == 0 else f"trained_net{k}")
            self.members.append((int(joined), trainer))
