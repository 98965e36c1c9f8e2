"""The trained-network schedule of distribution matching (IDC's loop for DM/IEM): grid options
reach it, the network really learns from real images between updates, IEM's perturbation never
leaks into the trained weights, and a run is a function of its seed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")  # digits is the small real dataset

from hashcondense.condense import Budget, build_condenser  # noqa: E402
from hashcondense.condense.iem import PerturbConfig, perturb_weights  # noqa: E402
from hashcondense.condense.matching import fresh_network  # noqa: E402
from hashcondense.condense.networks import NetworkTrainer, TrainedNetworks  # noqa: E402
from hashcondense.data import make_split  # noqa: E402
from hashcondense.normalization import Normalization  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    split = make_split("digits", resolution=8)
    return split.train, Normalization.from_images(split.train.images)


def iem(**matching):
    return build_condenser("iem", matching={"batch_real": 16, "compile": "off",
                                            "precision": "fp32", **matching})


def test_a_grid_mapping_switches_the_schedule_on_with_its_defaults():
    on = iem(trained_networks={"inner_loop": 5})
    assert on.matching.trained_networks == TrainedNetworks(inner_loop=5)
    assert iem().matching.trained_networks is None  # off by default: DM / IEM as published
    with pytest.raises(ValueError, match="trained_networks.steps must be >= 1"):
        iem(trained_networks={"steps": 0})
    with pytest.raises(ValueError, match="inner_loops"):
        iem(trained_networks={"inner_loops": 5})


def trainer_for(train, steps: int, lr: float = 0.05) -> NetworkTrainer:
    net = fresh_network("convnet3", in_channels=train.channels, resolution=train.resolution,
                        seed=0)
    return NetworkTrainer(TrainedNetworks(steps=steps, batch=64, lr=lr), net,
                          len(train.classes))


def test_the_network_learns_from_real_images_between_updates(digits):
    train, norm = digits
    trainer = trainer_for(train, steps=1, lr=0.2)
    trainer.fresh(trainer.base, seed=1)
    first = trainer.train(train.images, train.labels, norm, None, seed=0, iteration=0,
                          amp=None)
    for it in range(1, 80):
        last = trainer.train(train.images, train.labels, norm, None, seed=0, iteration=it,
                             amp=None)
    assert first > 2.0 and last < 0.5 * first  # ln(10) = 2.3 at chance
    with torch.no_grad():
        x = norm.normalize(train.images)
        accuracy = (trainer.head(trainer.base(x)).argmax(1) == train.labels).float().mean()
    assert accuracy > 0.6


def test_perturbation_acts_on_the_matching_copy_only(digits):
    train, norm = digits
    trainer = trainer_for(train, steps=1)
    trainer.fresh(trainer.base, seed=1)
    before = [p.detach().clone() for p in trainer.base.parameters()]
    net = fresh_network("convnet3", in_channels=train.channels, resolution=train.resolution,
                        seed=5).requires_grad_(False)
    trainer.copy_into(net)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), before, strict=True))
    perturb_weights(net, PerturbConfig(alpha=0.5), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(trainer.base.parameters(), before,
                                                 strict=True))
    assert not torch.equal(next(net.parameters()), before[0])


def test_trained_networks_change_the_set_and_runs_repeat(digits):
    train, norm = digits
    kwargs = dict(normalization=norm, seed=2, progress=False, budget=Budget(iterations=4))
    schedule = {"inner_loop": 2, "steps": 2, "batch": 16}
    a = iem(trained_networks=schedule).condense(train, 1, **kwargs)
    b = iem(trained_networks=schedule).condense(train, 1, **kwargs)
    fresh = iem().condense(train, 1, **kwargs)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, fresh.images)
    assert a.metadata["trained_networks"]["inner_loop"] == 2
    assert fresh.metadata["trained_networks"] is None
