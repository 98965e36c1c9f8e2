"""The trained-network schedule of distribution matching (IDC's loop for DM/IEM): grid options
reach it, the network really learns from real images between updates, IEM's perturbation never
leaks into the trained weights, and a run is a function of its seed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")  # digits is the small real dataset

from hashcondense.condense import Budget, Checkpointing, Execution, build_condenser  # noqa: E402
from hashcondense.condense import checkpoint as ckpt  # noqa: E402
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
    with pytest.raises(ValueError, match="trained_networks.steps must be an integer >= 1"):
        iem(trained_networks={"steps": 0})
    with pytest.raises(ValueError, match="trained_networks.queue must be an integer >= 1"):
        iem(trained_networks={"queue": 0})
    with pytest.raises(ValueError, match="trained_networks.queue must be an integer"):
        iem(trained_networks={"queue": 2.5})
    assert iem(trained_networks={"augment": None}).matching.trained_networks.augment is None
    with pytest.raises(ValueError, match="train_count .3. cannot exceed"):
        iem(trained_networks={"queue": 2, "train_count": 3})
    with pytest.raises(ValueError, match="inner_loops"):
        iem(trained_networks={"inner_loops": 5})


def trainer_for(train, norm, steps: int, lr: float = 0.05) -> NetworkTrainer:
    net = fresh_network("convnet3", in_channels=train.channels, resolution=train.resolution,
                        seed=0)
    return NetworkTrainer(TrainedNetworks(steps=steps, batch=64, lr=lr, augment=None), net,
                          train.images, train.labels, norm, len(train.classes))


def test_the_network_learns_from_real_images_between_updates(digits):
    train, norm = digits
    trainer = trainer_for(train, norm, steps=1, lr=0.2)
    trainer.fresh(trainer.base, torch.Generator().manual_seed(1))
    first = trainer.train(seed=0, iteration=0, amp=None)
    for it in range(1, 80):
        last = trainer.train(seed=0, iteration=it, amp=None)
    assert first > 2.0 and last < 0.5 * first  # ln(10) = 2.3 at chance
    with torch.no_grad():
        x = norm.normalize(train.images)
        accuracy = (trainer.head(trainer.base(x)).argmax(1) == train.labels).float().mean()
    assert accuracy > 0.6


def test_the_trained_path_ignores_the_synthetic_set_and_the_perturbation(digits, tmp_path):
    """The network is trained on real images only and perturbed on a copy: with weight
    perturbation on or off and another image lr (other synthetic images), the trained weights
    and momentum at a checkpoint inside a network's life are the same."""
    train, norm = digits
    schedule = {"inner_loop": 3, "steps": 2, "batch": 16}
    states = []
    for k, (network_aug, lr) in enumerate([(True, 5.0), (False, 5.0), (True, 0.5)]):
        condenser = build_condenser("iem", network_aug=network_aug, matching={
            "batch_real": 16, "compile": "off", "precision": "fp32", "lr": lr,
            "trained_networks": schedule})
        folder = tmp_path / str(k)
        syn = condenser.condense(train, 1, normalization=norm, seed=4, progress=False,
                                 budget=Budget(iterations=5), execution=Execution(
                                     checkpointing=Checkpointing(folder, every_iterations=4)))
        saved = ckpt.latest(folder)
        assert saved is not None and saved.position.iteration == 4
        states.append((syn.images, {k: v for k, v in saved.state.items()
                                    if k.startswith("trained_net")}))
    (images, trained), *others = states
    assert len(trained) > 4
    for other_images, other in others:
        assert not torch.equal(images, other_images)
        assert other.keys() == trained.keys()
        assert all(torch.equal(trained[k], other[k]) for k in trained)
    fresh = fresh_network("convnet3", in_channels=train.channels, resolution=train.resolution,
                          seed=4 * 1_000_003 + 3)  # the network iteration 3 started from
    assert not torch.equal(trained["trained_net.0"], next(fresh.parameters()))  # it trained


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


def test_copy_into_with_a_mix_lands_on_the_segment_between_initial_and_trained(digits):
    train, norm = digits
    trainer = trainer_for(train, norm, steps=3, lr=0.2)
    trainer.fresh(trainer.base, torch.Generator().manual_seed(1))
    init = [p.detach().clone() for p in trainer.base.parameters()]
    trainer.train(seed=0, iteration=0, amp=None)
    trained = [p.detach().clone() for p in trainer.base.parameters()]
    net = fresh_network("convnet3", in_channels=train.channels, resolution=train.resolution,
                        seed=0)  # the initial weights, as the loop redraws them
    trainer.copy_into(net, mix=0.25)
    for got, a, b in zip(net.parameters(), init, trained, strict=True):
        torch.testing.assert_close(got, 0.25 * a + 0.75 * b)
    trainer.copy_into(net)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), trained, strict=True))


def test_interpolated_networks_change_the_set_and_repeat(digits):
    train, norm = digits
    schedule = {"inner_loop": 3, "steps": 2, "batch": 16}
    kwargs = dict(normalization=norm, seed=3, progress=False, budget=Budget(iterations=5))
    plain = iem(trained_networks=schedule).condense(train, 1, **kwargs)
    mixed = iem(trained_networks={**schedule, "interpolate": True})
    a, b = mixed.condense(train, 1, **kwargs), mixed.condense(train, 1, **kwargs)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(plain.images, a.images)
    assert a.metadata["trained_networks"]["interpolate"] is True


def test_a_queue_keeps_the_newest_networks_and_trains_them_apart(digits, tmp_path):
    """IDM's queue: at a checkpoint after 9 updates with a new network every 2 and room for 3,
    the members are those that joined at 4, 6 and 8, the two older ones moved from their own
    initial weights by training; the run differs from the single network's."""
    train, norm = digits
    schedule = {"inner_loop": 2, "steps": 1, "batch": 16, "queue": 3, "train_count": 2}
    kwargs = dict(normalization=norm, seed=5, progress=False, budget=Budget(iterations=10))
    folder = tmp_path / "ckpt"
    queued = iem(trained_networks=schedule).condense(
        train, 1, **kwargs, execution=Execution(
            checkpointing=Checkpointing(folder, every_iterations=9)))
    saved = ckpt.latest(folder)
    assert saved is not None and saved.state["trained_net_joined"].tolist() == [4, 6, 8]
    for prefix, joined in (("trained_net", 4), ("trained_net1", 6)):  # 8: only if drawn
        init = fresh_network("convnet3", in_channels=train.channels,
                             resolution=train.resolution, seed=5 * 1_000_003 + joined)
        assert not torch.equal(saved.state[f"{prefix}.0"], next(init.parameters()))  # trained
    single = iem(trained_networks={**schedule, "queue": 1, "train_count": 1}).condense(
        train, 1, **kwargs)
    assert not torch.equal(queued.images, single.images)


def test_a_queue_of_one_is_the_single_network_schedule(digits):
    """NetworkQueue(queue=1) against the single-network sequence written out by hand: a
    fresh network every inner_loop updates, trained after every update but the last of its
    life, from the same streams."""
    from hashcondense.condense.matching import reinitialise
    from hashcondense.condense.networks import NetworkQueue
    from hashcondense.condense.streams import stream

    train, norm = digits
    schedule = TrainedNetworks(inner_loop=3, steps=1, batch=16, augment=None)

    def make():
        return NetworkTrainer(schedule, fresh_network(
            "convnet3", in_channels=train.channels, resolution=train.resolution, seed=0),
            train.images, train.labels, norm, len(train.classes))

    def initialise(net, joined):
        reinitialise(net, "convnet3", in_channels=train.channels,
                     resolution=train.resolution, seed=9 * 1_000_003 + joined)

    queue = NetworkQueue(schedule, make, initialise)
    by_hand = make()
    net_q, net_h = (fresh_network("convnet3", in_channels=train.channels,
                                  resolution=train.resolution, seed=1) for _ in range(2))
    for it in range(7):
        queue.prepare(net_q, it, seed=9)
        if it % 3 == 0:
            initialise(net_h, it)
            by_hand.fresh(net_h, stream(9, "net-head", it))
        else:
            by_hand.copy_into(net_h)
        assert all(torch.equal(a, b) for a, b in zip(net_q.parameters(), net_h.parameters(),
                                                     strict=True))
        queue.train(it, seed=9, amp=None)
        if (it + 1) % 3:
            by_hand.train(seed=9, iteration=it, amp=None)


def test_a_single_network_checkpoint_from_before_the_queue_still_loads(digits):
    from hashcondense.condense.networks import NetworkQueue

    train, norm = digits
    single = TrainedNetworks(inner_loop=3, batch=16, augment=None)

    def queue_for(schedule):
        def make():
            return NetworkTrainer(schedule, fresh_network(
                "convnet3", in_channels=train.channels, resolution=train.resolution, seed=0),
                train.images, train.labels, norm, len(train.classes))
        return NetworkQueue(schedule, make, lambda net, joined: None)

    old = queue_for(single)
    old.members = [(0, old.make())]
    old.members[0][1].train(seed=0, iteration=0, amp=None)
    state = {k: v for k, v in old.state().items() if k != "trained_net_joined"}
    restored = queue_for(single)
    restored.load_state(state)
    assert [j for j, _ in restored.members] == [-1]
    assert torch.equal(restored.members[0][1].state()["trained_net.0"], state["trained_net.0"])
    with pytest.raises(ValueError, match="no trained_net_joined"):
        queue_for(TrainedNetworks(inner_loop=3, batch=16, queue=2)).load_state(state)
