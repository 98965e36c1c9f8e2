"""Gradient matching, the maths that DC/DSA (Zhao et al. 2021; Zhao & Bilen 2021) and IDC
(Kim et al. 2022) share.

A synthetic batch S is good for a network θ when the classification loss it induces has the
same parameter gradient as a real batch of the same class: L = D(∇θ CE(S), ∇θ CE(R)). The
synthetic gradient keeps its graph (``create_graph=True``) so that ∂L/∂S flows back into the
pixels through the double backward; the real gradient is a detached target.

The per-tensor distance D is a parameter (a name in :data:`DISTANCES`), never a method switch:
- ``"layerwise_cos"`` (DC/DSA's distance): every gradient tensor is viewed as one row per output
  neuron — conv (out, in·k·k), linear (out, in), 3-D (C, H·W) — and contributes
  Σ_rows 1 − ⟨g_s, g_r⟩ / (‖g_s‖·‖g_r‖ + 1e-6); 1-D tensors (biases, norm parameters) give 0;
- ``"mse"``: Σ (g_s − g_r)², IDC on CIFAR;
- ``"l1"``: Σ |g_s − g_r|, IDC on ImageNet subsets.
Which parameters are matched at all is a separate choice, ``min_param_dim``: 2 skips biases and
norm parameters (DSA), 3 keeps conv weights only (IDC without ``--bias``/``--fc``).

Our backbones are feature extractors (``embed``); :class:`Classifier` adds the linear head that
the cross-entropy loss needs, as the references' networks have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..synthetic import SyntheticSet
from .base import Budget, SnapshotCallback
from .driver import Execution, Resumable, Snapshot, Step, drive
from .matching import fresh_network

log = logging.getLogger(__name__)

__all__ = [
    "DISTANCES",
    "Classifier",
    "class_gradients",
    "fresh_classifier",
    "gradient_distance",
    "layerwise_cosine",
    "match_loss",
    "matched_parameters",
    "reinitialise_classifier",
    "run_budgeted",
]

COS_EPS = 1e-6  # the references' guard in the cosine denominator


def layerwise_cosine(g_syn: torch.Tensor, g_real: torch.Tensor) -> torch.Tensor:
    """Σ over output neurons of 1 − cos(g_syn[row], g_real[row]); 0 for 1-D tensors."""
    if g_syn.dim() == 1:
        return g_syn.new_zeros(())
    rows = g_syn.shape[0]
    s, r = g_syn.reshape(rows, -1), g_real.reshape(rows, -1)
    cos = (s * r).sum(1) / (s.norm(dim=1) * r.norm(dim=1) + COS_EPS)
    return (1.0 - cos).sum()


def squared_error(g_syn: torch.Tensor, g_real: torch.Tensor) -> torch.Tensor:
    return (g_syn - g_real).pow(2).sum()


def absolute_error(g_syn: torch.Tensor, g_real: torch.Tensor) -> torch.Tensor:
    return (g_syn - g_real).abs().sum()


Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DISTANCES: dict[str, Distance] = {
    "layerwise_cos": layerwise_cosine,
    "mse": squared_error,
    "l1": absolute_error,
}


def resolve_distance(distance: str | Distance) -> Distance:
    if callable(distance):
        return distance
    try:
        return DISTANCES[distance]
    except KeyError:
        raise ValueError(f"unknown gradient distance {distance!r}; choose from "
                         f"{', '.join(sorted(DISTANCES))}") from None


def gradient_distance(syn_grads: Sequence[torch.Tensor], real_grads: Sequence[torch.Tensor],
                      distance: str | Distance = "layerwise_cos") -> torch.Tensor:
    """Σ over parameter tensors of ``distance(g_syn, g_real)``, in fp32."""
    if len(syn_grads) != len(real_grads):
        raise ValueError(f"{len(syn_grads)} synthetic but {len(real_grads)} real gradients")
    if not syn_grads:
        raise ValueError("no gradients to match")
    fn = resolve_distance(distance)
    total = None
    for s, r in zip(syn_grads, real_grads, strict=True):
        if s.shape != r.shape:
            raise ValueError(f"gradient shapes differ: {tuple(s.shape)} vs {tuple(r.shape)}")
        d = fn(s.float(), r.detach().float())
        total = d if total is None else total + d
    assert total is not None
    return total


def matched_parameters(net: nn.Module, min_param_dim: int) -> list[nn.Parameter]:
    """The parameters whose gradients are matched: those with at least ``min_param_dim`` dims."""
    params = [p for p in net.parameters() if p.dim() >= min_param_dim]
    if not params:
        raise ValueError(f"the network has no parameter with >= {min_param_dim} dims to match")
    return params


def class_gradients(logits: torch.Tensor, labels: torch.Tensor, params: Sequence[nn.Parameter],
                    *, create_graph: bool) -> tuple[torch.Tensor, ...]:
    """∇ of the mean cross-entropy of ``logits`` w.r.t. ``params``."""
    loss = F.cross_entropy(logits.float(), labels)
    return torch.autograd.grad(loss, list(params), create_graph=create_graph)


def match_loss(real_logits: torch.Tensor, real_labels: torch.Tensor, syn_logits: torch.Tensor,
               syn_labels: torch.Tensor, params: Sequence[nn.Parameter],
               distance: str | Distance) -> torch.Tensor:
    """D(∇θ CE(syn), ∇θ CE(real)): the real gradient is a constant target; the synthetic one
    keeps its graph, so the result back-propagates into whatever produced ``syn_logits``."""
    g_real = [g.detach() for g in class_gradients(real_logits, real_labels, params,
                                                 create_graph=False)]
    g_syn = class_gradients(syn_logits, syn_labels, params, create_graph=True)
    return gradient_distance(g_syn, g_real, distance)


class Classifier(nn.Module):
    """A backbone's ``embed`` feature followed by a linear layer to class logits."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone.embed(x))


def fresh_classifier(backbone: str, *, in_channels: int, resolution: int, num_classes: int,
                     seed: int) -> Classifier:
    """``fresh_network(seed)`` plus a linear head drawn from its own generator, with PyTorch's
    default Linear initialisation U(±1/√fan_in); the global RNG is left untouched."""
    body = fresh_network(backbone, in_channels=in_channels, resolution=resolution, seed=seed)
    with torch.random.fork_rng(devices=[]):  # Linear's own init draws from the global RNG
        net = Classifier(body, num_classes)
    g = torch.Generator().manual_seed(seed + 104_729)
    bound = 1.0 / math.sqrt(net.fc.in_features)
    with torch.no_grad():
        nn.init.uniform_(net.fc.weight, -bound, bound, generator=g)
        nn.init.uniform_(net.fc.bias, -bound, bound, generator=g)
    return net


@torch.no_grad()
def reinitialise_classifier(net: Classifier, backbone: str, *, in_channels: int,
                            resolution: int, num_classes: int, seed: int) -> Classifier:
    """Give ``net`` the weights ``fresh_classifier(seed)`` would have, in place, so one
    (compiled) module object serves every freshly initialised network."""
    fresh = fresh_classifier(backbone, in_channels=in_channels, resolution=resolution,
                             num_classes=num_classes, seed=seed)
    for target, value in zip(net.parameters(), fresh.parameters(), strict=True):
        target.copy_(value)
    return net


def sample_without_replacement(members: torch.Tensor, n: int,
                               generator: torch.Generator) -> torch.Tensor:
    """Up to ``n`` random entries of ``members`` (all of them, shuffled, when fewer)."""
    return members[torch.randperm(len(members), generator=generator)[:n]]


def run_budgeted(budget: Budget, iteration: Step, *, snapshot: Snapshot,
                 on_snapshot: SnapshotCallback | None, desc: str, progress: bool,
                 execution: Execution | None = None,
                 resumable: Resumable | None = None) -> SyntheticSet:
    """Run ``iteration`` until ``budget`` is spent, through the loop DM/IEM share
    (:func:`driver.drive`); DSA/IDC iterations last minutes on a CPU, so ``out_of_time`` is
    also checked between their steps and a run may end mid-iteration. Their networks train on
    every class, so they run in one process only; ``resumable`` gives their state at an
    iteration boundary to checkpoints."""
    execution = execution or Execution()
    if execution.world.size > 1:
        name = desc.split()[1] if len(desc.split()) > 1 else desc
        raise ValueError(f"{name} does not support world size > 1 yet (its network trains on "
                         "all classes; run it with one process)")
    if execution.checkpointing is not None and resumable is None:
        log.info("%s: checkpoints are not implemented for this method; a killed run starts "
                 "again", desc)
        execution = replace(execution, checkpointing=None)
    return drive(budget, iteration, snapshot=snapshot, desc=desc, execution=execution,
                 resumable=resumable, on_snapshot=on_snapshot, progress=progress)
