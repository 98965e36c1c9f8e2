"""The ``HashMethod`` interface: a hash head plus a loss on the codes of one or two views.

The trainer knows nothing method-specific: it asks the method for a head, feeds it the codes of a
weak (teacher) view and, when ``two_views`` is set, a strong (student) view, and minimises the
returned loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..registry import Registry


@dataclass
class HashBatch:
    """Continuous codes of a mini-batch.

    codes:        (B, K) codes of the weak/teacher view, the one used for retrieval.
    codes_strong: (B, K) codes of the strong/student view, or None for one-view methods.
    labels:       (B,) int64 class indices.
    """

    codes: torch.Tensor
    codes_strong: torch.Tensor | None
    labels: torch.Tensor


class HashMethod(Protocol):
    name: str
    two_views: bool

    def make_head(self, feature_dim: int, bits: int, num_classes: int) -> nn.Module: ...

    def loss(self, batch: HashBatch, head: nn.Module) -> torch.Tensor: ...


HASH_METHODS: Registry[HashMethod] = Registry("hash method")


def build_hash_method(name: str, **kwargs: object) -> HashMethod:
    return HASH_METHODS.get(name)(**kwargs)
