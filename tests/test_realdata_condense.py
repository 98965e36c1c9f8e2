"""Condense → train → mAP on real CIFAR-10: IEM at ipc 1 must beat a random coreset of the same
size (skips where the datasets are absent).

Sizes are cut so the test fits CI (a 40-iteration IEM with 32 real images per class, 300 judge
steps, 200 queries against a 3,000-image database). The margin comes from measured spread: see
MARGIN below.
"""

import dataclasses

import pytest

from hashcondense.condense import Budget
from hashcondense.condense.iem import IEM
from hashcondense.condense.matching import MatchingConfig
from hashcondense.condense.random import sample_per_class
from hashcondense.data import make_split
from hashcondense.evaluation import JudgeConfig, judge
from hashcondense.hashing.trainer import TrainConfig
from hashcondense.normalization import Normalization

pytestmark = pytest.mark.realdata

# Measured over seeds 0, 1, 2 (single thread, fp32, 2-core AMD EPYC): IEM vs Random mAP@1000
# 15.92 vs 14.27, 16.66 vs 13.30, 15.11 vs 13.41 — gaps of 1.65 / 3.36 / 1.69 points. The
# assertion keeps half of the smallest gap.
MARGIN = 0.008


def iem_and_random_map(data_root, seed: int) -> tuple[float, float]:
    split = make_split("cifar10", data_root, seed=0)
    small = dataclasses.replace(split, query_index=split.query_index[0:1000:5],
                                database_index=split.database_index[0:54000:18])
    norm = Normalization.from_images(split.train.images)
    config = JudgeConfig(bits=16, train=TrainConfig(epochs=1, min_steps=300, batch_size=32,
                                                    precision="fp32"))
    idx = sample_per_class(split.train.labels, 1, seed=seed)
    random_map = judge(norm.normalize(split.train.images[idx]), split.train.labels[idx], small,
                       norm, config=config, seed=seed, progress=False).metrics["mAP@1000"]
    iem = IEM(matching=MatchingConfig(lr=5.0, batch_real=32, precision="fp32"))
    syn = iem.condense(split.train, 1, normalization=norm, seed=seed,
                       budget=Budget(iterations=40), progress=False)
    images, labels = syn.decode()
    assert images.shape == (40, 3, 32, 32)  # f = 2: four decoded images per stored one
    iem_map = judge(images.detach(), labels, small, norm, config=config, seed=seed,
                    progress=False).metrics["mAP@1000"]
    return iem_map, random_map


def test_iem_beats_random_at_one_image_per_class(data_root):
    iem_map, random_map = iem_and_random_map(data_root, seed=0)
    assert iem_map > random_map + MARGIN, (iem_map, random_map)
