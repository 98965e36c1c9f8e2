"""The judge: train a hashing network on an image set, encode the protocol's query and database
splits, and report retrieval mAP. Every claim of the project is a number from here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from .data import RetrievalSplit
from .hashing import build_hash_method
from .hashing.trainer import TrainConfig, encode_images, train_hashing_network
from .hashing.training_state import TrainCheckpointing
from .normalization import Normalization
from .retrieval import evaluate_retrieval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeConfig:
    backbone: str = "convnet3"
    hash_method: str = "dhd"
    bits: int = 32
    train: TrainConfig = field(default_factory=TrainConfig)
    encode_batch_size: int = 500


@dataclass
class Evaluation:
    """Retrieval metrics of one model on one split, with the codes they came from."""

    metrics: dict[str, float]
    query_codes: torch.Tensor  # (n_query, K) int8 in {-1, +1}
    db_codes: torch.Tensor  # (n_db, K) int8 in {-1, +1}
    encode_seconds: float
    metric_seconds: float


@dataclass
class JudgeResult:
    evaluation: Evaluation
    train_seconds: float
    epochs: int
    steps: int
    model: torch.nn.Module

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation.metrics


def evaluate_model(
    model: torch.nn.Module,
    split: RetrievalSplit,
    normalization: Normalization,
    *,
    precision: str = "auto",
    compile: str = "off",
    batch_size: int = 500,
    progress: bool = False,
) -> Evaluation:
    """Encode the split's queries and database with ``model`` and compute every metric."""
    start = time.perf_counter()
    kwargs = dict(batch_size=batch_size, precision=precision, compile=compile, progress=progress)
    query = encode_images(model, split.query.images, normalization.normalize, **kwargs)
    database = encode_images(model, split.database.images, normalization.normalize, **kwargs)
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    topk = (split.topk,) if split.topk else ()
    metrics = evaluate_retrieval(query, database, split.query.labels, split.database.labels,
                                 topk=topk)
    return Evaluation(metrics, query, database, encode_seconds, time.perf_counter() - start)


def judge(
    images: torch.Tensor,
    labels: torch.Tensor,
    split: RetrievalSplit,
    normalization: Normalization,
    *,
    config: JudgeConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoints: TrainCheckpointing | None = None,
) -> JudgeResult:
    """Train on normalised float ``images`` (N, C, R, R) and evaluate on ``split``;
    ``checkpoints`` makes the training resumable (see :func:`train_hashing_network`)."""
    config = config or JudgeConfig()
    method = build_hash_method(config.hash_method)
    trained = train_hashing_network(
        images, labels, method=method, bits=config.bits,
        num_classes=len(split.train.classes), backbone=config.backbone,
        config=config.train, seed=seed, progress=progress, checkpoints=checkpoints,
    )
    evaluation = evaluate_model(
        trained.model, split, normalization, precision=config.train.precision,
        compile=config.train.compile, batch_size=config.encode_batch_size, progress=progress,
    )
    log.info("judge %s %d-bit: %s", config.hash_method, config.bits, evaluation.metrics)
    return JudgeResult(evaluation, trained.seconds, trained.epochs, trained.steps, trained.model)
