"""The judge end to end on real CIFAR-10 (skips where the datasets are absent)."""

import dataclasses

import pytest
import torch

from hashcondense.condense.random import sample_per_class
from hashcondense.data import make_split
from hashcondense.evaluation import JudgeConfig, judge
from hashcondense.hashing.trainer import TrainConfig
from hashcondense.normalization import Normalization

pytestmark = pytest.mark.realdata


def test_dhd_on_a_real_cifar10_subset_retrieves_far_above_chance(data_root):
    split = make_split("cifar10", data_root, seed=0)
    assert split.fingerprint() == make_split("cifar10", data_root, seed=0).fingerprint()
    # a smaller query/database keeps this under a minute; the protocol's own sizes are tested
    # in test_data.py
    small = dataclasses.replace(split, query_index=split.query_index[0:1000:5],
                                database_index=split.database_index[0:54000:18])
    norm = Normalization.from_images(split.train.images)
    idx = sample_per_class(split.train.labels, 40, seed=0)
    config = JudgeConfig(bits=16, train=TrainConfig(epochs=1, min_steps=300, batch_size=32,
                                                    precision="fp32"))
    torch.manual_seed(0)
    result = judge(norm.normalize(split.train.images[idx]), split.train.labels[idx], small, norm,
                   config=config, seed=0, progress=False)
    # 10 balanced classes: a random ranking scores ~0.10 mAP@all.
    assert result.metrics["mAP@all"] > 0.13
    assert set(result.metrics) == {"mAP@1000", "mAP@all", "mAP@all_tie_aware", "P@H<=2"}
    assert result.evaluation.query_codes.shape == (200, 16)
    assert set(result.evaluation.db_codes.unique().tolist()) <= {-1, 1}
