"""Gradient matching (DSA, IDC): the layer-wise distance by hand, the double backward into the
pixels, and both condensers' contract (balanced sets, determinism, snapshots, budgets)."""

import math

import pytest
import torch
from test_condense import tiny_set

from hashcondense.augment import DSAConfig
from hashcondense.condense import Budget, build_condenser, with_runtime
from hashcondense.condense.dsa import DSA, DSAMatchingConfig, dsa_loops
from hashcondense.condense.gradient_matching import (
    fresh_classifier,
    gradient_distance,
    layerwise_cosine,
    match_loss,
    matched_parameters,
)
from hashcondense.condense.idc import (
    IDC,
    IDCMatchingConfig,
    cutmix,
    preset_for,
    tuned_image_lr,
)
from hashcondense.normalization import Normalization

FAST_DSA = DSAMatchingConfig(batch_real=8, outer_loop=2, inner_loop=1, precision="fp32")
FAST_IDC = IDCMatchingConfig(batch_real=8, inner_loop=2, n_data=16, precision="fp32")


def fast(name: str, **changes):
    if name == "dsa":
        return DSA(matching=FAST_DSA, **changes)
    return IDC(matching=FAST_IDC, **changes)


def _cos_row(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return 1 - dot / (na * nb + 1e-6)


def test_layerwise_distance_by_hand():
    # a "conv" gradient (2 out, 1 in, 1x2 kernel), a linear one (2x2) and a bias
    conv_s = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 2.0]]]])
    conv_r = torch.tensor([[[[0.0, 3.0]]], [[[2.0, 4.0]]]])
    lin_s = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    lin_r = torch.tensor([[1.0, -1.0], [1.0, 2.0]])
    bias_s, bias_r = torch.tensor([5.0, -1.0]), torch.tensor([-2.0, 7.0])
    expected = (_cos_row([1, 0], [0, 3]) + _cos_row([1, 2], [2, 4])  # 1 + ~0
                + _cos_row([1, 1], [1, -1]) + _cos_row([3, -1], [1, 2]))  # 1 + (1 - 1/√50)
    got = gradient_distance([conv_s, lin_s, bias_s], [conv_r, lin_r, bias_r])
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(3 - 1 / math.sqrt(50), abs=1e-5)
    assert layerwise_cosine(bias_s, bias_r).item() == 0.0  # 1-D tensors are ignored
    # 3-D gradients are one row per leading index (C, H·W)
    g = torch.randn(2, 3, 4)
    assert layerwise_cosine(g, g.clone()).item() == pytest.approx(0.0, abs=1e-5)
    assert layerwise_cosine(g, -g).item() == pytest.approx(4.0, abs=1e-5)


def test_mse_and_l1_distances_by_hand():
    s, r = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    assert gradient_distance([s], [r], "mse").item() == pytest.approx(1 + 4 + 9 + 4)
    assert gradient_distance([s], [r], "l1").item() == pytest.approx(1 + 2 + 3 + 2)
    with pytest.raises(ValueError, match="distance"):
        gradient_distance([s], [r], "l2")


def test_matched_parameters_select_by_dimension():
    net = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=0)
    assert [p.dim() for p in matched_parameters(net, 3)] == [4, 4, 4]  # conv weights only
    assert [p.dim() for p in matched_parameters(net, 2)] == [4, 4, 4, 2]  # + the FC weight


def test_fresh_classifier_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=5)
    b = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=5)
    c = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert a(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize(("distance", "min_dim"), [("layerwise_cos", 2), ("mse", 3), ("l1", 3)])
def test_gradients_reach_synthetic_pixels_through_the_double_backward(distance, min_dim):
    net = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=0)
    params = matched_parameters(net, min_dim)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(8, 3, 16, 16, generator=g, requires_grad=True)
    syn = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    y_real, y_syn = torch.full((8,), 1), torch.full((2,), 1)
    loss = match_loss(net(real), y_real, net(syn), y_syn, params, distance)
    loss.backward(inputs=[syn, real])
    assert syn.grad is not None and torch.isfinite(syn.grad).all()
    assert syn.grad.abs().sum() > 0
    assert real.grad is None  # the real gradient is a constant target


@pytest.mark.parametrize(("distance", "min_dim", "lr"),
                         [("layerwise_cos", 2, 0.1), ("mse", 3, 0.01)])
def test_image_steps_reduce_the_loss_on_a_fixed_network(distance, min_dim, lr):
    """Measured: layerwise_cos 406 → 291, mse 190 → 112 after 20 steps."""
    train = tiny_set(per_class=16)
    norm = Normalization.from_images(train.images)
    real = norm.normalize(train.images)
    ys = torch.arange(3).repeat_interleave(2)
    syn = torch.cat([real[train.labels == c][:2] for c in range(3)]).requires_grad_(True)
    net = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=0)
    params = matched_parameters(net, min_dim)
    opt = torch.optim.SGD([syn], lr=lr, momentum=0.5)

    def loss():
        return sum(match_loss(net(real[train.labels == c]), train.labels[train.labels == c],
                              net(syn[ys == c]), ys[ys == c], params, distance)
                   for c in range(3))

    first = loss()
    for _ in range(12):
        opt.zero_grad()
        current = loss()
        current.backward(inputs=[syn])
        opt.step()
    assert loss().item() < 0.85 * first.item()


def test_dsa_loops_follow_the_reference_table():
    assert dsa_loops(1) == (1, 1) and dsa_loops(10) == (10, 50) and dsa_loops(50) == (50, 10)
    assert dsa_loops(20) == (20, 25)
    assert dsa_loops(2) == (1, 1) and dsa_loops(7) == (10, 50) and dsa_loops(100) == (50, 10)
    assert dsa_loops(5) == (1, 1)  # a tie goes to the smaller ipc


def test_idc_presets_and_image_lr_follow_the_reference():
    assert [tuned_image_lr(5e-3, ipc, 32, 32) for ipc in (1, 10, 50)] == pytest.approx(
        [5e-4, 5e-3, 2.5e-2])
    assert tuned_image_lr(3e-3, 10, 224, 224) == pytest.approx(3e-3)
    name, preset = preset_for("auto", 32)
    assert name == "cifar" and preset.distance == "mse" and preset.early_epochs == 0
    name, preset = preset_for("auto", 64)
    assert name == "imagenet" and preset.distance == "l1" and preset.mix_p == 1.0
    with pytest.raises(ValueError, match="preset"):
        IDCMatchingConfig(preset="svhn")


def test_cutmix_pastes_one_box_and_reports_the_kept_area():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    for seed in range(10):
        mixed, partner, ratio = cutmix(x, torch.Generator().manual_seed(seed))
        for i in range(4):
            pasted = mixed[i, 0] == x[partner[i], 0, 0, 0]
            kept = mixed[i, 0] == x[i, 0, 0, 0]
            if partner[i] != i:
                assert kept.float().mean().item() == pytest.approx(ratio)
            assert (pasted | kept).all()


@pytest.mark.parametrize("name", ["dsa", "idc"])
def test_condenser_returns_a_balanced_set_with_metadata(name):
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    syn = fast(name).condense(train, 2, normalization=norm, seed=0,
                              budget=Budget(iterations=2), progress=False)
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert syn.images.shape == (6, 3, 16, 16)
    assert syn.factor == (1 if name == "dsa" else 2)
    images, labels = syn.decode()
    assert images.shape == (6 * syn.factor**2, 3, 16, 16) and labels.shape[0] == images.shape[0]
    assert torch.isfinite(images).all()
    meta = syn.metadata
    assert meta["method"] == name and meta["ipc"] == 2 and meta["seed"] == 0
    assert meta["iterations"] == 2 and meta["seconds"] > 0 and math.isfinite(meta["final_loss"])
    assert meta["precision"] == "fp32" and meta["compiled"] is False
    if name == "dsa":
        assert (meta["outer_loop"], meta["inner_loop"], meta["distance"]) == (2, 1,
                                                                              "layerwise_cos")
        assert meta["steps"] == 4
    else:
        assert meta["distance"] == "mse" and meta["preset"] == "cifar"
        assert meta["lr"] == pytest.approx(5e-3 * 0.2 * 0.25)  # ipc 2 at 16 px
        assert meta["steps"] == 4


@pytest.mark.parametrize("name", ["dsa", "idc"])
def test_condenser_is_deterministic_under_a_seed(name):
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    runs = [fast(name).condense(train, 1, normalization=norm, seed=s, progress=False,
                                budget=Budget(iterations=1)).images for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("name", ["dsa", "idc"])
def test_snapshots_are_delivered_at_the_requested_iterations(name):
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    seen = []
    final = fast(name).condense(
        train, 1, normalization=norm, seed=0, progress=False,
        budget=Budget(iterations=3, snapshots=(1, 3)),
        on_snapshot=lambda it, sec, syn: seen.append((it, syn.metadata["iterations"], syn)))
    assert [(it, meta_it) for it, meta_it, _ in seen] == [(1, 1), (3, 3)]
    torch.testing.assert_close(seen[-1][2].images, final.images)
    assert not torch.equal(seen[0][2].images, final.images)


@pytest.mark.parametrize("name", ["dsa", "idc"])
def test_a_wall_clock_budget_can_end_inside_an_iteration(name):
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    long = (DSA(matching=DSAMatchingConfig(batch_real=8, outer_loop=10_000, inner_loop=0,
                                           precision="fp32")) if name == "dsa" else
            IDC(matching=IDCMatchingConfig(batch_real=8, inner_loop=10_000, n_data=8,
                                           precision="fp32")))
    syn = long.condense(train, 1, normalization=norm, seed=0, progress=False,
                        budget=Budget(seconds=0.5))
    assert syn.metadata["iterations"] == 0 and 1 <= syn.metadata["steps"] < 10_000
    assert syn.metadata["seconds"] < 5


def _held_out_loss(syn, train, norm, distance, min_dim, seeds=(101, 102, 103)):
    """The matching loss of the decoded set under fresh networks the condenser never saw."""
    real = norm.normalize(train.images)
    x, y = syn.decode()
    total = 0.0
    for s in seeds:
        net = fresh_classifier("convnet3", in_channels=3, resolution=16, num_classes=3, seed=s)
        params = matched_parameters(net, min_dim)
        for c in range(3):
            total += match_loss(net(real[train.labels == c]), train.labels[train.labels == c],
                                net(x[y == c]), y[y == c], params, distance).item()
    return total


@pytest.mark.parametrize("name", ["dsa", "idc"])
def test_condensing_reduces_the_matching_loss_on_held_out_networks(name):
    """Measured after/before ratios (tiny_set seeds 0, 1, 2): DSA 0.76 / 0.75 / 0.77, IDC
    0.67 / 0.65 / 0.65.

    DSA starts from noise here: from real images its held-out loss is already near its floor
    on this tiny problem, where the per-network optimum overfits each network."""
    train = tiny_set(per_class=16)
    norm = Normalization.from_images(train.images)
    if name == "dsa":
        condenser = DSA(matching=DSAMatchingConfig(batch_real=16, outer_loop=5, inner_loop=5,
                                                   dsa=None, init="noise", precision="fp32"))
        distance, min_dim, ratio = "layerwise_cos", 2, 0.9
    else:
        condenser = IDC(matching=IDCMatchingConfig(batch_real=16, inner_loop=5, n_data=16,
                                                   aug=None, precision="fp32"))
        distance, min_dim, ratio = "mse", 3, 0.8
    kwargs = dict(normalization=norm, seed=0, progress=False)
    before = condenser.condense(train, 2, budget=Budget(iterations=0), **kwargs)
    after = condenser.condense(train, 2, budget=Budget(iterations=4), **kwargs)
    assert after.metadata["iterations"] == 4
    assert (_held_out_loss(after, train, norm, distance, min_dim)
            < ratio * _held_out_loss(before, train, norm, distance, min_dim))


def test_idc_i_and_a_too_large_factor():
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    syn = fast("idc", factor=1).condense(train, 1, normalization=norm, seed=0, progress=False,
                                         budget=Budget(iterations=1))
    assert syn.factor == 1 and syn.decode()[0].shape[0] == 3
    with pytest.raises(ValueError, match="factor"):
        fast("idc", factor=5).condense(train, 1, normalization=norm, seed=0, progress=False,
                                       budget=Budget(iterations=1))


def test_idc_needs_ipc_times_f_squared_real_images_per_class():
    train = tiny_set(per_class=7)
    norm = Normalization.from_images(train.images)
    with pytest.raises(ValueError, match="c0"):
        fast("idc").condense(train, 2, normalization=norm, seed=0, progress=False,
                             budget=Budget(iterations=1))


def test_with_runtime_reaches_both_configs_and_bad_options_are_refused():
    for name in ("dsa", "idc"):
        condenser = with_runtime(build_condenser(name), compile="auto")
        assert condenser.matching.compile == "auto"
    assert build_condenser("dsa").iterations == 1000
    assert build_condenser("idc").iterations == 2000
    with pytest.raises(ValueError, match="distance"):
        DSAMatchingConfig(distance="cosine")
    with pytest.raises(ValueError, match="init"):
        DSAMatchingConfig(init="zeros")
    with pytest.raises(ValueError, match="compile"):
        IDCMatchingConfig(compile="yes")
    assert DSAMatchingConfig().dsa == DSAConfig()
