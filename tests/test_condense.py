"""Condensers: registry smoke tests, the matching loss, weight perturbation, herding."""

import math
import statistics

import numpy as np
import pytest
import torch

from hashcondense.condense import CONDENSERS, Budget, build_condenser
from hashcondense.condense.dsa import DSAMatchingConfig
from hashcondense.condense.herding import herding_select
from hashcondense.condense.idc import IDCMatchingConfig
from hashcondense.condense.iem import IEM, PerturbConfig, perturb_weights
from hashcondense.condense.matching import (
    AttentionEmbedding,
    MatchingConfig,
    class_covariance_losses,
    class_matching_losses,
    class_means,
    class_mmd_losses,
    distribution_matching_loss,
    fresh_network,
    match_distributions,
    spatial_attention,
)
from hashcondense.data import LabeledImages
from hashcondense.hashing.trainer import TrainConfig
from hashcondense.normalization import Normalization


def tiny_set(classes=3, per_class=12, side=16, seed=0) -> LabeledImages:
    """Each class a distinct mean colour plus noise: learnable, and class means differ."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(classes, 3, 1, 1, generator=g) * 200 + 20
    imgs = colours.repeat_interleave(per_class, 0) + torch.randn(
        classes * per_class, 3, side, side, generator=g) * 25
    labels = torch.arange(classes).repeat_interleave(per_class)
    return LabeledImages(imgs.clamp(0, 255).to(torch.uint8), labels,
                         tuple(f"c{i}" for i in range(classes)))


FAST = {
    "dm": dict(matching=MatchingConfig(batch_real=8, precision="fp32")),
    "iem": dict(matching=MatchingConfig(batch_real=8, precision="fp32")),
    "herding": dict(feature_train=TrainConfig(epochs=1)),
    "dsa": dict(matching=DSAMatchingConfig(batch_real=8, precision="fp32")),
    "idc": dict(matching=IDCMatchingConfig(batch_real=8, inner_loop=2, n_data=16,
                                           precision="fp32")),
}


@pytest.mark.parametrize("name", CONDENSERS.names())
def test_every_condenser_returns_a_balanced_synthetic_set(name):
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    condenser = build_condenser(name, **FAST.get(name, {}))
    syn = condenser.condense(train, 2, normalization=norm, seed=0, budget=Budget(iterations=2),
                             progress=False)
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2]
    images, labels = syn.decode()
    assert images.shape[1:] == (3, 16, 16)
    assert images.shape[0] == labels.shape[0] == 6 * syn.factor**2
    assert torch.isfinite(images).all()
    assert syn.metadata["method"] == name


@pytest.mark.parametrize("name", CONDENSERS.names())
def test_ipc_larger_than_a_class_is_refused_before_work(name):
    train = tiny_set(per_class=4)
    norm = Normalization.from_images(train.images)
    with pytest.raises(ValueError, match="c0"):
        build_condenser(name, **FAST.get(name, {})).condense(
            train, 5, normalization=norm, seed=0, budget=Budget(iterations=1), progress=False)


def test_class_means_match_brute_force():
    feats = torch.randn(10, 4)
    groups = torch.tensor([0, 2, 2, 1, 0, 0, 2, 1, 1, 2])
    means = class_means(feats, groups, 3)
    for c in range(3):
        torch.testing.assert_close(means[c], feats[groups == c].mean(0))


def test_distribution_matching_loss_is_zero_for_equal_means_and_hand_value():
    m = torch.randn(3, 5)
    assert distribution_matching_loss(m, m.clone()).item() == 0.0
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert distribution_matching_loss(a, b).item() == pytest.approx(1 + 4 + 9 + 16)


def test_real_side_gets_no_gradient():
    real = torch.randn(2, 3, requires_grad=True)
    syn = torch.randn(2, 3, requires_grad=True)
    distribution_matching_loss(real, syn).backward()
    assert real.grad is None and syn.grad.abs().sum() > 0


def test_covariance_term_equals_the_explicit_covariance_difference():
    """The Gram-matrix form against ‖Σ_real − Σ_syn‖²_F built as D×D matrices, per class;
    zero for equal sets, and the gradient reaches the synthetic features only."""
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(30, 7, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    syn = torch.randn(9, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    real_groups = torch.arange(30) % 3
    syn_groups = torch.arange(9) // 3
    got = class_covariance_losses(real, real_groups, syn, syn_groups, 3)
    for c in range(3):
        x, y = real.detach()[real_groups == c], syn.detach()[syn_groups == c]
        cov_x = torch.cov(x.T, correction=0)
        cov_y = torch.cov(y.T, correction=0)
        assert got[c].item() == pytest.approx(((cov_x - cov_y) ** 2).sum().item(), rel=1e-5)
    got.sum().backward()
    assert syn.grad.abs().sum() > 0 and real.grad is None
    same = class_covariance_losses(real, real_groups, real.detach().clone(), real_groups, 3)
    assert same.abs().max().item() < 1e-3 * got.max().item()


def test_covariance_weight_changes_the_set_and_is_recorded():
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    kwargs = dict(method="dm", normalization=norm, seed=0, budget=Budget(iterations=3),
                  progress=False)
    plain = MatchingConfig(batch_real=8, compile="off", precision="fp32", dsa=None)
    base = match_distributions(train, 2, config=plain, **kwargs)
    cov = match_distributions(train, 2, config=MatchingConfig(
        batch_real=8, compile="off", precision="fp32", dsa=None, covariance_weight=1.0),
        **kwargs)
    assert not torch.equal(base.images, cov.images)
    assert cov.metadata["covariance_weight"] == 1.0 and base.metadata["covariance_weight"] == 0
    with pytest.raises(ValueError, match="covariance_weight"):
        MatchingConfig(covariance_weight=-1.0)
    with pytest.raises(ValueError, match="covariance_weight needs at least 2 synthetic"):
        match_distributions(train, 1, config=MatchingConfig(
            batch_real=8, compile="off", precision="fp32", dsa=None, covariance_weight=1.0),
            **kwargs)


def _brute_mmd(x: torch.Tensor, y: torch.Tensor, scales) -> float:
    """MMD² by its definition, pair by pair, with the real side's median bandwidth."""
    median = statistics.median(float(((x[i] - x[j]) ** 2).sum()) for i in range(len(x))
                               for j in range(i + 1, len(x)))

    def k(a, b):
        return sum(math.exp(-float(((a - b) ** 2).sum()) / (s * median)) for s in scales)

    def mean_k(p, q):
        return sum(k(a, b) for a in p for b in q) / (len(p) * len(q))
    return mean_k(x, x) - 2 * mean_k(x, y) + mean_k(y, y)


def test_mmd_term_equals_its_definition_and_sees_what_the_mean_misses():
    """The per-class MMD² against a pair-by-pair sum; zero for equal sets; and where two sets
    share a mean but not a spread, Eq. 7's term is near zero while MMD² is not."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(24, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    syn = (torch.randn(8, 5, generator=g, dtype=torch.float64) * 1.5 + 0.3).requires_grad_(True)
    real_groups, syn_groups = torch.arange(24) % 2, torch.arange(8) // 4
    scales = (0.5, 2.0)
    got = class_mmd_losses(real, real_groups, syn, syn_groups, 2, scales)
    for c in range(2):
        want = _brute_mmd(real.detach()[real_groups == c], syn.detach()[syn_groups == c],
                          scales)
        assert got[c].item() == pytest.approx(want, rel=1e-6)
    got.sum().backward()
    assert syn.grad.abs().sum() > 0 and real.grad is None
    same = class_mmd_losses(real, real_groups, real.detach().clone(), real_groups, 2, scales)
    assert same.abs().max().item() < 1e-12
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    spread = torch.randn(400, 3, generator=g, dtype=torch.float64) * 3
    spread = spread - spread.mean(0) + x.mean(0)  # the same mean, three times the spread
    groups = torch.zeros(400, dtype=torch.long)
    assert class_matching_losses(x.mean(0, keepdim=True), spread.mean(0, keepdim=True)) < 1e-20
    assert class_mmd_losses(x, groups, spread, groups, 1, (1.0,)).item() > 0.1


def _tiny_dm(**options):
    """Three DM updates on ``tiny_set`` at ipc 2 with extra ``MatchingConfig`` options."""
    train = tiny_set()
    config = MatchingConfig(batch_real=8, compile="off", precision="fp32", dsa=None,
                            **options)
    return match_distributions(train, 2, config=config, method="dm", seed=0, progress=False,
                               normalization=Normalization.from_images(train.images),
                               budget=Budget(iterations=3))


def test_mmd_weight_changes_the_set_and_is_recorded():
    base, mmd = _tiny_dm(), _tiny_dm(mmd_weight=50.0)
    assert not torch.equal(base.images, mmd.images)
    assert mmd.metadata["mmd_weight"] == 50.0 and mmd.metadata["mmd_scales"] == [0.5, 1, 2]
    assert "mmd_weight" not in base.metadata  # a plain set's metadata keeps its shape
    for bad in ({"mmd_weight": -1.0}, {"mmd_scales": ()}, {"mmd_scales": (1.0, 0.0)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MatchingConfig(**bad)


def test_spatial_attention_known_values():
    """Σ_c |a_c|^p over channels, flattened, unit L2 norm per image: a hand-computed case."""
    maps = torch.zeros(2, 2, 2, 2)
    maps[0, 0] = torch.tensor([[1.0, -2.0], [0.0, 2.0]])
    maps[0, 1] = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    maps[1, 0, 1, 1] = 5.0
    got = spatial_attention(maps, power=1.0)
    want0 = torch.tensor([4.0, 2.0, 0.0, 2.0]) / 24**0.5
    assert torch.allclose(got[0], want0) and torch.allclose(got[1], torch.tensor([0, 0, 0, 1.0]))
    squared = spatial_attention(maps, power=2.0)[0]
    assert torch.allclose(squared, torch.tensor([10.0, 4.0, 0.0, 4.0]) / 132**0.5)


@pytest.mark.parametrize("backbone,resolution,shapes", [
    ("convnet3", 32, [(128, 32, 32), (128, 16, 16)]),
    ("resnetap10", 32, [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]),
])
def test_embed_with_maps_is_embed_plus_the_intermediate_maps(backbone, resolution, shapes):
    """The embedding equals ``embed``'s; for ConvNet-3 the maps are what forward hooks on its
    ReLUs see, all but the last (DataDAM's layers)."""
    from torch import nn

    net = fresh_network(backbone, in_channels=3, resolution=resolution, seed=0).eval()
    x = torch.randn(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    features, maps = net.embed_with_maps(x)
    assert torch.allclose(features, net.embed(x), atol=1e-6)
    assert [tuple(m.shape[1:]) for m in maps] == shapes
    if backbone == "convnet3":
        seen = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
                 for m in net.modules() if isinstance(m, nn.ReLU)]
        net.embed(x)
        for h in hooks:
            h.remove()
        assert len(seen) == 3
        for got, want in zip(maps, seen[:-1], strict=True):
            assert torch.equal(got, want)
    wrapped = AttentionEmbedding(net, power=1.0)(x)
    attention = torch.cat([spatial_attention(m, 1.0) for m in maps], 1)
    assert torch.allclose(wrapped, torch.cat([features, attention], 1), atol=1e-6)


def test_attention_weight_changes_the_set_and_is_recorded():
    """Weight 0 is DM's loop bit for bit; a positive weight moves the images; both recorded."""
    train = tiny_set(side=32)
    norm = Normalization.from_images(train.images)
    kwargs = dict(method="dm", normalization=norm, seed=0, budget=Budget(iterations=3),
                  progress=False)
    common = dict(batch_real=8, compile="off", precision="fp32", dsa=None, backbone="convnet3")
    base = match_distributions(train, 2, config=MatchingConfig(**common), **kwargs)
    zero = match_distributions(train, 2, config=MatchingConfig(
        **common, attention_weight=0.0, attention_power=4.0), **kwargs)
    att = match_distributions(train, 2, config=MatchingConfig(
        **common, attention_weight=100.0), **kwargs)
    assert torch.equal(base.images, zero.images)
    assert not torch.equal(base.images, att.images)
    assert att.metadata["attention_weight"] == 100.0 and att.metadata["attention_power"] == 1.0
    assert base.metadata["attention_weight"] == 0
    with pytest.raises(ValueError, match="attention_weight"):
        MatchingConfig(attention_weight=-1.0)
    with pytest.raises(ValueError, match="attention_power"):
        MatchingConfig(attention_power=0.0)


def test_attention_term_lowers_the_attention_gap():
    """Descending the attention term (weighted to swamp Eq. 7) shrinks the distance between the
    real and synthetic class means of the attention maps under a net the loop never drew."""
    train = tiny_set(side=32)
    norm = Normalization.from_images(train.images)
    net = fresh_network("convnet3", in_channels=3, resolution=32, seed=7)
    wrapped = AttentionEmbedding(net, power=1.0)

    def gap(images):
        real = wrapped(norm.normalize(train.images)).detach()
        syn = wrapped(images).detach()
        dim = net.feature_dim
        return distribution_matching_loss(
            class_means(real[:, dim:], train.labels, 3),
            class_means(syn[:, dim:], torch.arange(3).repeat_interleave(2), 3)).item()

    config = MatchingConfig(batch_real=12, compile="off", precision="fp32", dsa=None,
                            backbone="convnet3", attention_weight=1e4, lr=0.05)
    start = match_distributions(train, 2, method="dm", config=config, normalization=norm,
                                seed=0, budget=Budget(iterations=0), progress=False)
    end = match_distributions(train, 2, method="dm", config=config, normalization=norm,
                              seed=0, budget=Budget(iterations=20), progress=False)
    # the term more than halves the gap (0.062 → 0.023); Eq. 7 alone at this lr leaves 0.052
    assert gap(end.images) < 0.5 * gap(start.images)


def _loss_under_fixed_nets(stored, train, norm, factor, seeds=(101, 102, 103, 104)):
    from hashcondense.synthetic import decoded_labels, multi_formation_decode

    real = norm.normalize(train.images)
    total = 0.0
    for s in seeds:
        net = fresh_network("convnet3", in_channels=3, resolution=16, seed=s)
        with torch.no_grad():
            rm = class_means(net.embed(real), train.labels, 3)
            x = multi_formation_decode(stored.images, factor, 16)
            sm = class_means(net.embed(x), decoded_labels(stored.labels, factor), 3)
        total += distribution_matching_loss(rm, sm).item()
    return total


@pytest.mark.parametrize(("factor", "max_ratio"), [(1, 0.92), (2, 0.5)])
def test_matching_decreases_the_loss_on_held_out_networks(factor, max_ratio):
    """Measured here: f=1 87.2 → 77.5, f=2 184 → ~50 (multi-formation has more freedom)."""
    train = tiny_set(per_class=16)
    norm = Normalization.from_images(train.images)
    config = MatchingConfig(batch_real=16, factor=factor, dsa=None, precision="fp32", lr=2.0)
    kwargs = dict(method="dm", config=config, normalization=norm, seed=0, progress=False)
    before = match_distributions(train, 2, budget=Budget(iterations=0), **kwargs)
    after = match_distributions(train, 2, budget=Budget(iterations=60), **kwargs)
    assert after.metadata["iterations"] == 60
    l0 = _loss_under_fixed_nets(before, train, norm, factor)
    l1 = _loss_under_fixed_nets(after, train, norm, factor)
    assert l1 < max_ratio * l0


def test_snapshots_are_delivered_at_the_requested_iterations():
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    seen = []
    IEM(matching=MatchingConfig(batch_real=4, precision="fp32")).condense(
        train, 1, normalization=norm, seed=0, progress=False,
        budget=Budget(iterations=4, snapshots=(1, 3)),
        on_snapshot=lambda it, sec, syn: seen.append((it, syn.metadata["iterations"])))
    assert seen == [(1, 1), (3, 3)]


def test_condensation_is_deterministic_under_a_seed():
    train = tiny_set()
    norm = Normalization.from_images(train.images)
    iem = IEM(matching=MatchingConfig(batch_real=4, precision="fp32"))
    runs = [iem.condense(train, 1, normalization=norm, seed=s, budget=Budget(iterations=2),
                         progress=False).images for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_real_chunking_leaves_condensation_unchanged():
    train = tiny_set(per_class=12)
    norm = Normalization.from_images(train.images)
    runs = [IEM(matching=MatchingConfig(batch_real=12, precision="fp32", real_chunk=chunk))
            .condense(train, 1, normalization=norm, seed=0, budget=Budget(iterations=2),
                      progress=False).images for chunk in (0, 5)]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["filter", "layer"])
def test_perturbation_has_the_norm_of_the_weights_times_alpha(mode):
    net = fresh_network("convnet3", in_channels=3, resolution=16, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    alpha = perturb_weights(net, PerturbConfig(alpha=0.05, mode=mode),
                            torch.Generator().manual_seed(0))
    assert alpha == 0.05
    for name, p in net.state_dict().items():
        delta = p - before[name]
        if p.dim() < 2:
            assert torch.equal(delta, torch.zeros_like(delta)), name  # bias / norm untouched
        elif mode == "filter":
            torch.testing.assert_close(delta.flatten(1).norm(dim=1),
                                       0.05 * before[name].flatten(1).norm(dim=1))
        else:
            torch.testing.assert_close(delta.norm(), 0.05 * before[name].norm())


def test_random_alpha_is_in_range_with_both_signs():
    net = fresh_network("convnet3", in_channels=3, resolution=16, seed=0)
    g = torch.Generator().manual_seed(1)
    alphas = [perturb_weights(net, PerturbConfig(), g) for _ in range(40)]
    assert all(0.01 <= abs(a) <= 0.09 for a in alphas)
    assert min(alphas) < 0 < max(alphas)


def test_bad_perturb_and_factor_are_refused():
    with pytest.raises(ValueError, match="mode"):
        PerturbConfig(mode="row")
    train = tiny_set(side=8)
    with pytest.raises(ValueError, match="factor"):
        IEM(factor=3).condense(train, 1, normalization=Normalization.from_images(train.images),
                               seed=0, budget=Budget(iterations=1), progress=False)


def brute_force_herding(features: np.ndarray, k: int) -> list[int]:
    mu = features.mean(0)
    chosen: list[int] = []
    for t in range(1, k + 1):
        best, best_d = None, np.inf
        for i in range(len(features)):
            if i in chosen:
                continue
            candidate = np.mean(features[chosen + [i]], axis=0)
            d = np.sum((t * candidate - t * mu) ** 2)
            if d < best_d - 1e-12:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_an_iterations_families_are_shared_by_every_class_in_modes_s_and_c():
    """The iteration draws the families once (mode M from then on), so every class's own
    parameters come under the same families; mode C draws its one geometric family there."""
    from hashcondense.augment import DSAConfig
    from hashcondense.condense.matching import iteration_dsa

    for mode, sizes in (("S", {1}), ("C", {4})):
        seen = set()
        for seed in range(30):
            fixed = iteration_dsa(DSAConfig(mode=mode), torch.Generator().manual_seed(seed))
            assert fixed.mode == "M" and len(fixed.families) in sizes
            seen.add(fixed.families)
        assert len(seen) > 1  # drawn, not fixed
    assert {f[2] for f in seen} == {"crop", "scale", "rotate"}
    assert all(f[:2] == ("flip", "color") and f[3] == "cutout" for f in seen)
    whole = DSAConfig(mode="M")
    assert iteration_dsa(whole, torch.Generator().manual_seed(0)) == whole


def test_herding_equals_brute_force_greedy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        feats = rng.normal(size=(25, 6))
        assert herding_select(torch.from_numpy(feats), 8) == brute_force_herding(feats, 8)


def test_herding_first_pick_is_closest_to_mean_and_k_checked():
    feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [4.0, 1.0], [6.0, -1.0]])
    assert herding_select(feats, 1) == [2] or herding_select(feats, 1) == [3]
    with pytest.raises(ValueError):
        herding_select(feats, 5)


def test_with_runtime_reaches_every_nested_runtime_config():
    from hashcondense.condense import with_runtime

    iem = with_runtime(build_condenser("iem"), compile="auto")
    assert iem.matching.compile == "auto" and iem.matching.lr == IEM().matching.lr
    herding = with_runtime(build_condenser("herding"), compile="auto")
    assert herding.feature_train.compile == "auto"
    rnd = build_condenser("random")
    assert with_runtime(rnd, compile="auto") == rnd
    # a setting the runtime leaves out stays the condenser's own
    dm = with_runtime(build_condenser("dm", matching={"precision": "fp32"}), compile="auto")
    assert (dm.matching.precision, dm.matching.compile) == ("fp32", "auto")
    with pytest.raises(ValueError, match="precision must be one of"):
        with_runtime(rnd, precision="fp16")


def test_every_condenser_declares_its_interface_and_a_bare_one_is_refused():
    from dataclasses import dataclass

    from hashcondense.condense import CONDENSERS
    from hashcondense.condense.base import CondenserRegistry

    for name in CONDENSERS:
        cls = CONDENSERS.get(name)
        assert isinstance(cls.algorithm_version, int) and cls.algorithm_version >= 1
        assert isinstance(cls.iterative, bool) and cls.name == name
        assert not cls.iterative or cls.iterations >= 1
    assert {n for n in CONDENSERS if CONDENSERS.get(n).iterative} == {"dm", "dsa", "idc", "iem"}

    @dataclass(frozen=True)
    class Bare:
        name: str = "bare"

        def condense(self, *args, **kwargs): ...

    registry = CondenserRegistry("condenser")
    with pytest.raises(TypeError, match="'bare' does not declare algorithm_version, iterative, "
                                        "with_runtime"):
        registry.register("bare")(Bare)

    @dataclass(frozen=True)
    class Looping(Bare):
        algorithm_version = 1
        iterative = True

        def with_runtime(self, runtime):
            return self

    with pytest.raises(TypeError, match="does not declare iterations"):
        registry.register("looping")(Looping)
