"""Classification accuracy of a training image set: the dataset-condensation (DC) protocol.

Train a fresh backbone + ``Linear(feature_dim, num_classes)`` with cross-entropy on a (synthetic
or real) image set and report top-1 accuracy on the split's held-out images. It answers the
paper's Fig. 1 question — does a set that is good for classification also give good retrieval? —
so it trains under exactly the retrieval judge's recipe: the classifier is run through
:func:`~hashcondense.hashing.trainer.train_hashing_network` as a one-view "hash method" whose head
is the linear classifier and whose loss is cross-entropy. Optimiser, schedule, augmentation (the
one-view ``weak_augment``), precision, compile, step budget and seeding are therefore the judge's
own, not a copy. (The DC papers evaluate with the full DSA strategy: pass
``TrainConfig(weak_augment="color_crop_cutout_flip_scale_rotate")`` for that.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import RetrievalSplit
from .hashing.base import HashBatch
from .hashing.trainer import (
    TrainConfig,
    build_hashing_network,
    eval_outputs,
    train_hashing_network,
)
from .hashing.training_state import TrainCheckpointing
from .models import HashingNetwork
from .normalization import Normalization
from .runtime import default_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassificationConfig:
    """Backbone and training recipe of the classification judge (defaults: the retrieval
    judge's, so both judges spend the same budget on a set)."""

    backbone: str = "convnet3"
    train: TrainConfig = field(default_factory=TrainConfig)
    encode_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be >= 1, got {self.encode_batch_size}")


@dataclass
class ClassificationResult:
    """Test accuracy of one trained classifier, with the predictions it came from."""

    accuracy: float  # in [0, 1]
    train_seconds: float
    steps: int
    epochs: int
    test_size: int
    eval_seconds: float
    # (test_size,) int64 predicted / true labels, query images first, then held-out database
    predictions: torch.Tensor | None = field(default=None, repr=False)
    targets: torch.Tensor | None = field(default=None, repr=False)
    model: HashingNetwork | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """The JSON-able numbers (no tensors, no model) for result files."""
        return {"accuracy": self.accuracy, "train_seconds": self.train_seconds,
                "steps": self.steps, "epochs": self.epochs, "test_size": self.test_size,
                "eval_seconds": self.eval_seconds}


class CrossEntropyClassifier:
    """The ``HashMethod`` interface filled with a linear classifier: head = Linear(feature_dim,
    num_classes), loss = cross-entropy on its logits. Lets the hashing trainer train a plain
    classifier; deliberately not registered as a hash method (its "codes" are logits)."""

    name = "cross_entropy"
    two_views = False

    def make_head(self, feature_dim: int, bits: int, num_classes: int) -> nn.Module:
        if bits != num_classes:
            raise ValueError(f"a classifier head has one output per class: bits={bits} "
                             f"but num_classes={num_classes}")
        return nn.Linear(feature_dim, num_classes)

    def loss(self, batch: HashBatch, head: nn.Module) -> torch.Tensor:
        return F.cross_entropy(batch.codes.float(), batch.labels)


def build_classifier(
    *, backbone: str, num_classes: int, in_channels: int, resolution: int, seed: int
) -> HashingNetwork:
    """A freshly initialised backbone + linear classifier, exactly as training starts it."""
    return build_hashing_network(
        CrossEntropyClassifier(), backbone=backbone, bits=num_classes, num_classes=num_classes,
        in_channels=in_channels, resolution=resolution, seed=seed,
    )


@dataclass(frozen=True)
class HeldOut:
    """Positions (into ``split.query`` / ``split.database``) of the images never trained on."""

    query: np.ndarray
    database: np.ndarray

    def __len__(self) -> int:
        return len(self.query) + len(self.database)


def held_out(split: RetrievalSplit) -> HeldOut:
    """The classification test set of ``split``: queries plus the database images that are
    neither training images nor queries (no image counted twice).

    Membership is decided by (pool, index) from ``split.index_pool`` and the index arrays, so it
    is exact for every protocol: cifar10/digits (one pool; the database already excludes train
    and query, test = all 55,000 / 1,297 non-train images), imagenet10/20 (queries from the test
    split, the database is the whole train split: only its non-training images count) and
    validation splits. Queries that are training images (never so in the shipped protocols)
    are dropped as well.
    """
    pools = split.index_pool

    def not_in(idx: np.ndarray, name: str, others: list[tuple[str, np.ndarray]]) -> np.ndarray:
        keep = np.ones(len(idx), dtype=bool)
        for other, other_idx in others:
            if pools[other] == pools[name]:
                keep &= ~np.isin(idx, other_idx)
        return np.flatnonzero(keep)

    query = not_in(split.query_index, "query", [("train", split.train_index)])
    database = not_in(split.database_index, "database",
                      [("train", split.train_index), ("query", split.query_index[query])])
    if len(query) < len(split.query):
        log.warning("%d queries of %s are training images; left out of the test set",
                    len(split.query) - len(query), split.protocol)
    return HeldOut(query, database)


def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    index: np.ndarray | None = None,
    batch_size: int = 500,
    precision: str = "auto",
    compile: str = "off",
) -> torch.Tensor:
    """Arg-max class (N,) int64 of uint8 ``images`` (of ``images[index]`` when given).

    Each batch forwards in the runtime's CPU-friendly chunks (``default_chunk``).
    """
    device = next(model.parameters()).device
    return eval_outputs(model, images, normalize, lambda logits: logits.argmax(dim=1),
                        index=index, batch_size=batch_size, chunk=default_chunk(device),
                        precision=precision, compile=compile, desc="predict",
                        empty_dtype=torch.int64)


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, split: RetrievalSplit,
                  normalization: Normalization) -> None:
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, C, R, R) tensor, got "
                         f"{tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError("images must be normalised floats (use Normalization.normalize)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be (N,) with N = {images.shape[0]} images, got "
                         f"{tuple(labels.shape)}")
    expected = (split.train.channels, split.train.resolution, split.train.resolution)
    if tuple(images.shape[1:]) != expected:
        raise ValueError(f"images are {tuple(images.shape[1:])} but the split's are {expected} "
                         "(channels, height, width)")
    if len(normalization.mean) != split.train.channels:
        raise ValueError(f"normalization has {len(normalization.mean)} channels, the split "
                         f"{split.train.channels}")
    num_classes = len(split.train.classes)
    if labels.is_floating_point() or int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes}), got "
                         f"{labels.dtype} in [{labels.min().item()}, {labels.max().item()}]")


def evaluate_classification(
    images: torch.Tensor,
    labels: torch.Tensor,
    split: RetrievalSplit,
    normalization: Normalization,
    *,
    config: ClassificationConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    checkpoints: TrainCheckpointing | None = None,
) -> ClassificationResult:
    """Train a classifier on normalised float ``images`` (N, C, R, R) and test it on ``split``.

    The test set is :func:`held_out` (queries + non-training database images); it is used for
    the final accuracy only — no early stopping or model selection, the last-step model is
    scored. Deterministic for a seed on a given machine and precision: initialisation, batch
    order and augmentation all come from ``seed``.
    """
    config = config or ClassificationConfig()
    _check_inputs(images, labels, split, normalization)
    test = held_out(split)  # decided before training, and never looked at until scoring
    if len(test) == 0:
        raise ValueError(f"split {split.protocol!r} has no held-out images to test on")
    num_classes = len(split.train.classes)
    trained = train_hashing_network(
        images, labels, method=CrossEntropyClassifier(), bits=num_classes,
        num_classes=num_classes, backbone=config.backbone, config=config.train, seed=seed,
        progress=progress, checkpoints=checkpoints,
    )
    start = time.perf_counter()
    kwargs = dict(batch_size=config.encode_batch_size, precision=config.train.precision,
                  compile=config.train.compile)
    predictions = torch.cat([
        predict_labels(trained.model, split.query.images, normalization.normalize,
                       index=test.query, **kwargs),
        predict_labels(trained.model, split.database.images, normalization.normalize,
                       index=test.database, **kwargs),
    ])
    targets = torch.cat([split.query.labels[torch.as_tensor(test.query)],
                         split.database.labels[torch.as_tensor(test.database)]])
    accuracy = (predictions == targets).double().mean().item()
    eval_seconds = time.perf_counter() - start
    log.info("classification %s on %d images: accuracy %.4f over %d held-out images "
             "(%d steps, %.1fs train, %.1fs eval)", config.backbone, images.shape[0], accuracy,
             len(targets), trained.steps, trained.seconds, eval_seconds)
    return ClassificationResult(
        accuracy=accuracy, train_seconds=trained.seconds, steps=trained.steps,
        epochs=trained.epochs, test_size=len(targets), eval_seconds=eval_seconds,
        predictions=predictions, targets=targets, model=trained.model,
    )
