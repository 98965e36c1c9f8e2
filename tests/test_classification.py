"""The classification judge (DC protocol): held-out test set, accuracy, determinism, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_hashing_methods import _patterns  # 4 texture classes, colour carries no class

from hashcondense.classification import (
    ClassificationConfig,
    ClassificationResult,
    build_classifier,
    evaluate_classification,
    held_out,
    predict_labels,
)
from hashcondense.data import LabeledImages, protocols, split_from_pools
from hashcondense.hashing.trainer import TrainConfig
from hashcondense.normalization import Normalization

CLASSES = ("hstripes", "vstripes", "checker", "plain")
FAST = TrainConfig(epochs=40, batch_size=32, precision="fp32", device="cpu", compile="off")


def _labeled(per_class: int, seed: int) -> LabeledImages:
    images, labels = _patterns(per_class, torch.Generator().manual_seed(seed))
    return LabeledImages(images, labels, CLASSES)


def _shrink(mp: pytest.MonkeyPatch, name: str, query: int, train: int) -> None:
    spec = protocols.BUILTIN_PROTOCOLS[name]
    rule = dataclasses.replace(spec.rule, query_per_class=query, train_per_class=train)
    mp.setitem(protocols.BUILTIN_PROTOCOLS, name, dataclasses.replace(spec, rule=rule))


@pytest.fixture(scope="module")
def pooled_split():
    """digits-style protocol on one pool of 4 x 40 images: 8 query / 16 train / 16 database per
    class; the database already excludes train and query."""
    with pytest.MonkeyPatch.context() as mp:
        _shrink(mp, "digits", 8, 16)
        return split_from_pools("digits", {"pool": _labeled(40, seed=0)}, seed=0)


@pytest.fixture(scope="module")
def trained(pooled_split):
    split = pooled_split
    norm = Normalization.from_images(split.train.images)
    result = evaluate_classification(
        norm.normalize(split.train.images), split.train.labels, split, norm,
        config=ClassificationConfig(train=FAST), seed=0,
    )
    return split, norm, result


def test_accuracy_is_the_recount_of_its_predictions_over_the_held_out_images(trained):
    split, _, result = trained
    assert isinstance(result, ClassificationResult)
    assert 0.0 <= result.accuracy <= 1.0
    # the whole non-training part of the pool: 4 x (8 query + 16 database)
    assert result.test_size == len(result.predictions) == len(result.targets) == 96
    expected_targets = torch.cat([split.query.labels, split.database.labels])
    assert torch.equal(result.targets, expected_targets)
    recount = sum(int(p == t) for p, t in zip(result.predictions.tolist(),
                                              result.targets.tolist(), strict=True))
    assert result.accuracy == pytest.approx(recount / result.test_size, abs=1e-12)
    assert result.steps == 40 * 2 and result.epochs == 40  # 64 images, batch 32
    assert result.train_seconds > 0 and result.eval_seconds > 0
    assert set(result.to_dict()) == {"accuracy", "train_seconds", "steps", "epochs",
                                     "test_size", "eval_seconds"}


def test_training_beats_an_untrained_classifier_by_far(trained):
    split, norm, result = trained
    untrained = build_classifier(backbone="convnet3", num_classes=4, in_channels=3,
                                 resolution=16, seed=0).eval()
    images = torch.cat([split.query.images, split.database.images])
    before = (predict_labels(untrained, images, norm.normalize, precision="fp32")
              == result.targets).double().mean().item()
    assert before < 0.45  # chance is 0.25
    assert result.accuracy >= 0.85
    assert result.accuracy > before + 0.4
    # the returned model is the one that was scored
    again = predict_labels(result.model, images, norm.normalize, precision="fp32")
    assert torch.equal(again, result.predictions)


def test_predictions_do_not_depend_on_chunking_or_indexing(trained):
    split, norm, result = trained
    db = split.database.images
    full = predict_labels(result.model, db, norm.normalize, batch_size=500, precision="fp32")
    small = predict_labels(result.model, db, norm.normalize, batch_size=7, precision="fp32")
    assert torch.equal(full, small)
    index = np.array([5, 0, 63, 17, 17])
    picked = predict_labels(result.model, db, norm.normalize, index=index, batch_size=2,
                            precision="fp32")
    assert torch.equal(picked, full[index])
    empty = predict_labels(result.model, db, norm.normalize, index=np.zeros(0, np.int64))
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_a_call_is_deterministic_for_its_seed(pooled_split):
    split = pooled_split
    norm = Normalization.from_images(split.train.images)
    x, y = norm.normalize(split.train.images), split.train.labels
    config = ClassificationConfig(train=dataclasses.replace(FAST, epochs=2))

    def run(seed: int) -> ClassificationResult:
        torch.manual_seed(1234 + seed)  # the global stream must play no part
        return evaluate_classification(x, y, split, norm, config=config, seed=seed)

    a, b, c = run(0), run(0), run(1)
    assert a.accuracy == b.accuracy
    assert torch.equal(a.predictions, b.predictions)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc)
               for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True))


def test_pooled_test_set_excludes_training_images_and_counts_nothing_twice(pooled_split):
    split = pooled_split
    test = held_out(split)
    assert len(test) == len(split.query) + len(split.database)
    held = np.concatenate([split.query_index[test.query], split.database_index[test.database]])
    assert not set(held.tolist()) & set(split.train_index.tolist())
    assert len(set(held.tolist())) == len(held)
    # a database that lists the whole pool (train and query included) gives the same test set
    pool = _labeled(40, seed=0)
    assert torch.equal(split.pool_data["pool"].images, pool.images)
    everything = dataclasses.replace(split, database_index=np.arange(len(pool), dtype=np.int64))
    wide = held_out(everything)
    assert np.array_equal(everything.database_index[wide.database], split.database_index)
    assert np.array_equal(wide.query, test.query)


def test_database_with_training_images_is_filtered():
    """imagenet10-style: queries from the test split, the database is the whole train split
    (training images included), so only its non-training images may be tested on."""
    with pytest.MonkeyPatch.context() as mp:
        _shrink(mp, "imagenet10", 3, 5)
        pools = {"train": _labeled(9, seed=1), "test": _labeled(4, seed=2)}
        split = split_from_pools("imagenet10", pools, seed=0)
    assert len(split.database) == 36  # the whole train split
    test = held_out(split)
    assert len(test.query) == 12
    assert len(test.database) == 36 - 20
    kept = split.database_index[test.database]
    assert not set(kept.tolist()) & set(split.train_index.tolist())
    assert set(kept.tolist()) | set(split.train_index.tolist()) == set(range(36))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, y: (x, y[:-1]), "labels must be"),
        (lambda x, y: (x[:, :1], y), "channels, height, width"),
        (lambda x, y: (x[..., :8, :8], y), "channels, height, width"),
        (lambda x, y: ((x * 0).to(torch.uint8), y), "normalised floats"),
        (lambda x, y: (x, y + 4), r"labels must be integers in \[0, 4\)"),
        (lambda x, y: (x[:0], y[:0]), "non-empty"),
    ],
    ids=["length", "channels", "resolution", "uint8", "label-range", "empty"],
)
def test_bad_input_is_a_clear_value_error(pooled_split, mutate, match):
    split = pooled_split
    norm = Normalization.from_images(split.train.images)
    x, y = mutate(norm.normalize(split.train.images), split.train.labels)
    with pytest.raises(ValueError, match=match):
        evaluate_classification(x, y, split, norm, config=ClassificationConfig(train=FAST))


def test_mismatched_normalization_and_bad_config_are_rejected(pooled_split):
    split = pooled_split
    norm = Normalization.from_images(split.train.images)
    x = norm.normalize(split.train.images)
    with pytest.raises(ValueError, match="normalization has 1 channels"):
        evaluate_classification(x, split.train.labels, split, Normalization((0.5,), (0.2,)))
    with pytest.raises(ValueError, match="encode_batch_size"):
        ClassificationConfig(encode_batch_size=0)
