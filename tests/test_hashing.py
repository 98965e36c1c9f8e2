"""Hash methods (every registered one, plus DHD by hand), the trainer, checkpoints,
normalisation and runtime selection."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from hashcondense.hashing import HASH_METHODS, HashBatch, build_hash_method
from hashcondense.hashing.checkpoint import (
    META,
    WEIGHTS,
    load_hashing_model,
    save_hashing_model,
)
from hashcondense.hashing.dhd import (
    DHD,
    DHDHead,
    bce_quantization_loss,
    distillation_loss,
    proxy_loss,
)
from hashcondense.hashing.trainer import (
    TrainConfig,
    _lr_factor,
    build_hashing_network,
    encode_images,
    train_hashing_network,
)
from hashcondense.models import HashingNetwork
from hashcondense.normalization import Normalization
from hashcondense.retrieval import mean_average_precision
from hashcondense.runtime import resolve_device, resolve_precision

METHOD_NAMES = HASH_METHODS.names()
CPU = torch.device("cpu")


def test_registry_has_dhd():
    assert "dhd" in METHOD_NAMES
    assert isinstance(build_hash_method("dhd"), DHD)
    with pytest.raises(ValueError, match="unknown hash method 'nope'.*dhd"):
        build_hash_method("nope")


# ----------------------------------------------------------------------------------------------
# Every registered hash method: the HashMethod contract
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_head_output_shape(name):
    torch.manual_seed(0)
    method = build_hash_method(name)
    assert method.name == name
    assert isinstance(method.two_views, bool)
    head = method.make_head(24, 16, 5)
    out = head(torch.randn(7, 24))
    assert out.shape == (7, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_loss_is_finite_scalar_with_gradient_to_codes(name):
    torch.manual_seed(0)
    method = build_hash_method(name)
    head = method.make_head(24, 16, 3)
    codes = torch.tanh(torch.randn(6, 16)).requires_grad_()
    strong = torch.tanh(torch.randn(6, 16)).requires_grad_() if method.two_views else None
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = method.loss(HashBatch(codes, strong, labels), head)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert codes.grad is not None
    assert torch.isfinite(codes.grad).all() and codes.grad.abs().sum() > 0
    if strong is not None:
        assert strong.grad is not None and torch.isfinite(strong.grad).all()
        assert strong.grad.abs().sum() > 0


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_trains_end_to_end_through_head(name):
    """Codes from the head: the loss reaches the head's parameters (and the features)."""
    torch.manual_seed(0)
    method = build_hash_method(name)
    head = method.make_head(24, 8, 3)
    feats = torch.randn(6, 24, requires_grad=True)
    codes = head(feats)
    strong = head(feats + 0.1 * torch.randn(6, 24)) if method.two_views else None
    loss = method.loss(HashBatch(codes, strong, torch.tensor([0, 1, 2, 0, 1, 2])), head)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


# ----------------------------------------------------------------------------------------------
# DHD by hand
# ----------------------------------------------------------------------------------------------


def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def test_proxy_loss_matches_hand_computation():
    codes = [[0.5, -1.0], [0.3, 0.4]]
    proxies = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]
    labels = [2, 1]
    tau = 0.5
    total = 0.0
    for c, y in zip(codes, labels, strict=True):
        cu = _unit(c)
        logits = [sum(a * b for a, b in zip(cu, _unit(p), strict=True)) / tau for p in proxies]
        log_z = math.log(sum(math.exp(v) for v in logits))
        total += log_z - logits[y]
    expected = total / len(codes)
    got = proxy_loss(torch.tensor(codes), torch.tensor(proxies), torch.tensor(labels), tau)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_proxy_loss_scale_invariant_and_sharper_with_small_tau():
    torch.manual_seed(0)
    codes, proxies = torch.randn(5, 8), torch.randn(3, 8)
    labels = torch.tensor([0, 1, 2, 0, 1])
    a = proxy_loss(codes, proxies, labels, 0.2)
    b = proxy_loss(7 * codes, 0.1 * proxies, labels, 0.2)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)  # cosine: norms do not matter
    # codes equal to their own proxy: loss falls as tau shrinks
    p = torch.eye(3)
    y = torch.tensor([0, 1, 2])
    assert proxy_loss(p, p, y, 0.1) < proxy_loss(p, p, y, 1.0)


def test_distillation_loss_values():
    torch.manual_seed(0)
    t = torch.randn(4, 6)
    assert distillation_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(-t, t).item() == pytest.approx(2.0, abs=1e-6)
    assert distillation_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    # orthogonal rows: 1 - 0; mix with identical rows: mean of (1, 0)
    s = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    te = torch.tensor([[0.0, 5.0], [1.0, 1.0]])
    assert distillation_loss(s, te).item() == pytest.approx(0.5, abs=1e-6)


def test_distillation_loss_stops_gradient_to_teacher():
    torch.manual_seed(0)
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6, requires_grad=True)
    distillation_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_bce_quantization_loss_hand_value():
    # sigma 0.5: exp(-(c-1)^2 / 0.5); for c = 0.5 the bump around +1 is exp(-0.5) and the one
    # around -1 exp(-4.5); c = -0.5 mirrors it. Each BCE term averages to
    # (0.5 - log(1 - exp(-4.5))) / 2, and the loss is their sum.
    codes = torch.tensor([[0.5, -0.5]])
    expected = 0.5 - math.log(1 - math.exp(-4.5))
    assert bce_quantization_loss(codes).item() == pytest.approx(expected, rel=1e-5)
    # a single entry with an explicit sigma: c = 0.2, sigma = 1 -> bumps exp(-0.32), exp(-0.72)
    got = bce_quantization_loss(torch.tensor([[0.2]]), sigma=1.0).item()
    assert got == pytest.approx(0.32 - math.log(1 - math.exp(-0.72)), rel=1e-5)


def test_bce_quantization_prefers_binary_codes():
    at_one = bce_quantization_loss(torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
    near_zero = bce_quantization_loss(torch.tensor([[0.1, -0.1, 0.1, -0.1]]))
    assert at_one < 0.01
    assert near_zero > 1.0
    assert at_one < near_zero
    # and its gradient pushes a code away from 0, towards its sign
    c = torch.tensor([[0.3, -0.3]], requires_grad=True)
    bce_quantization_loss(c).backward()
    assert c.grad[0, 0] < 0 < c.grad[0, 1]


def test_dhd_loss_is_weighted_sum_of_terms():
    torch.manual_seed(0)
    method = DHD(tau=0.3, lambda_distill=0.7, lambda_quant=0.25, sigma=0.6)
    head = method.make_head(10, 8, 3)
    codes, strong = torch.tanh(torch.randn(5, 8)), torch.tanh(torch.randn(5, 8))
    labels = torch.tensor([0, 1, 2, 1, 0])
    got = method.loss(HashBatch(codes, strong, labels), head)
    expected = (
        proxy_loss(codes, head.proxies, labels, 0.3)
        + 0.25 * bce_quantization_loss(codes, 0.6)
        + 0.7 * distillation_loss(strong, codes)
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    one_view = method.loss(HashBatch(codes, None, labels), head)
    assert one_view.item() == pytest.approx(
        (expected - 0.7 * distillation_loss(strong, codes)).item(), rel=1e-6
    )


def test_dhd_head_shape_range_and_proxies():
    torch.manual_seed(0)
    head = DHDHead(20, 12, 5)
    assert head.proxies.shape == (5, 12)
    assert any(p is head.proxies for p in head.parameters())
    out = head(1e4 * torch.randn(9, 20))  # huge features: tanh still strictly inside (-1, 1)
    assert out.shape == (9, 12)
    assert (out.abs() < 1).all()
    assert head.fc.bias is None


@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan"), float("inf")])
def test_dhd_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        DHD(tau=tau)


def test_dhd_defaults():
    m = DHD()
    assert (m.tau, m.name, m.two_views) == (0.2, "dhd", True)


# ----------------------------------------------------------------------------------------------
# TrainConfig, schedule, build_hashing_network
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -3}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"lr": 0.0}, "lr"),
        ({"weak_augment": "crop_blur"}, "blur"),
        ({"strong_augment": "color_warp"}, "warp"),
        ({"cutmix": 1.5}, "cutmix"),
        ({"cutmix": -0.1}, "cutmix"),
        ({"cutmix_beta": 0.0}, "cutmix_beta"),
        ({"strong_augment_mode": "idc"}, "strong_augment_mode"),
        ({"strong_augment": "none", "strong_augment_mode": "X"}, "strong_augment_mode"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_train_config_accepts_none_augment_and_round_trips():
    cfg = TrainConfig(weak_augment="none", strong_augment="none", optimizer="sgd",
                      schedule="step")
    assert TrainConfig(**cfg.to_dict()) == cfg


def test_lr_factor_schedules():
    total = 100
    assert _lr_factor("cosine", 0, total) == pytest.approx(1.0)
    assert _lr_factor("cosine", total // 2, total) == pytest.approx(0.5)
    assert _lr_factor("cosine", total, total) == pytest.approx(0.0, abs=1e-12)
    assert _lr_factor("cosine", total - 1, total) < 1e-3
    factors = [_lr_factor("cosine", s, total) for s in range(total + 1)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    # step (DC convention): full lr for the first half, x0.1 from the middle step on
    assert _lr_factor("step", 0, total) == 1.0
    assert _lr_factor("step", total // 2 - 1, total) == 1.0
    assert _lr_factor("step", total // 2, total) == pytest.approx(0.1)
    assert _lr_factor("step", total - 1, total) == pytest.approx(0.1)
    assert _lr_factor("constant", 0, total) == _lr_factor("constant", 99, total) == 1.0


def _net(seed: int, *, bits: int = 8, method=None) -> HashingNetwork:
    return build_hashing_network(
        method or DHD(), backbone="convnet3", bits=bits, num_classes=3, in_channels=1,
        resolution=8, seed=seed,
    )


def test_build_hashing_network_seeded_and_rng_neutral():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a, b, c = _net(5), _net(5), _net(6)
    assert torch.equal(torch.get_rng_state(), before)  # fork_rng: global stream untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.backbone.feature_dim == 128
    assert a(torch.randn(2, 1, 8, 8)).shape == (2, 8)


def test_build_hashing_network_rejects_zero_bits():
    with pytest.raises(ValueError, match="bits"):
        _net(0, bits=0)


# ----------------------------------------------------------------------------------------------
# train_hashing_network
# ----------------------------------------------------------------------------------------------


def _tiny(n: int = 8, channels: int = 3, side: int = 8, classes: int = 2):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, channels, side, side, generator=g)
    labels = torch.arange(n) % classes
    return images, labels


FAST = dict(epochs=3, batch_size=4, precision="fp32", device="cpu")


def _train(images, labels, seed, **cfg):
    return train_hashing_network(
        images, labels, method=DHD(), bits=8, num_classes=2,
        config=TrainConfig(**{**FAST, **cfg}), seed=seed, progress=False,
    )


def test_training_is_deterministic_under_a_seed():
    images, labels = _tiny()
    r1, r2 = _train(images, labels, seed=3), _train(images, labels, seed=3)
    r3 = _train(images, labels, seed=4)
    assert len(r1.losses) == 3
    assert all(math.isfinite(v) for v in r1.losses)
    assert r1.losses == r2.losses
    s1, s2, s3 = r1.model.state_dict(), r2.model.state_dict(), r3.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1.losses != r3.losses
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    assert not r1.model.training  # left in eval mode


@pytest.mark.parametrize("cutmix", [0.0, 1.0])
def test_training_does_not_touch_global_rng(cutmix):
    images, labels = _tiny()
    torch.manual_seed(99)
    before = torch.get_rng_state()
    _train(images, labels, seed=0, epochs=1, cutmix=cutmix)
    assert torch.equal(torch.get_rng_state(), before)


def test_cutmix_loss_weights_each_label_by_its_images_share_of_the_area():
    """One step on the whole batch, views unaugmented: the recorded loss must be the CutMix
    loss recomputed by hand from the same draws (the trainer's generator, replayed)."""
    from hashcondense.augment import apply_cutmix, sample_cutmix

    images, labels = _tiny(n=6, channels=1)
    labels = torch.arange(6) % 3
    seed, method = 5, DHD()
    cfg = TrainConfig(epochs=1, batch_size=6, weak_augment="none", strong_augment="none",
                      cutmix=1.0, precision="fp32", device="cpu")
    run = train_hashing_network(images, labels, method=method, bits=8, num_classes=3,
                                config=cfg, seed=seed, progress=False)
    g = torch.Generator().manual_seed(seed + 1_000_003)
    order = torch.randperm(6, generator=g)
    torch.rand((), generator=g)  # the trainer's "CutMix this batch?" draw
    mix = sample_cutmix(6, 8, 8, beta=1.0, generator=g)
    x, y = apply_cutmix(images[order], mix), labels[order]
    net = build_hashing_network(method, backbone="convnet3", bits=8, num_classes=3,
                                in_channels=1, resolution=8, seed=seed)
    net.train()
    codes = net(torch.cat([x, x]))

    def loss(t):
        return method.loss(HashBatch(codes[:6], codes[6:], t), net.head).item()
    want = mix.ratio * loss(y) + (1 - mix.ratio) * loss(y[mix.perm])
    assert run.losses[0] == pytest.approx(want, rel=1e-5)
    assert 0 < mix.ratio < 1 and loss(y) != pytest.approx(want)  # the mixing mattered
    plain = train_hashing_network(images, labels, method=method, bits=8, num_classes=3,
                                  config=dataclasses.replace(cfg, cutmix=0.0), seed=seed,
                                  progress=False)
    assert plain.losses[0] != pytest.approx(run.losses[0])


@pytest.mark.parametrize(
    ("n", "batch_size", "epochs", "min_steps", "want_epochs", "want_steps"),
    [
        (10, 4, 1, 0, 1, 3),  # ceil(10 / 4) = 3 steps per epoch
        (10, 4, 1, 10, 4, 12),  # ceil(10 / 3) = 4 epochs to reach 10 steps
        (10, 4, 5, 10, 5, 15),  # epochs already enough
        (6, 64, 2, 7, 7, 7),  # batch larger than the set: one step per epoch
    ],
)
def test_min_steps_raises_epochs(n, batch_size, epochs, min_steps, want_epochs, want_steps):
    images, labels = _tiny(n=n, channels=1)
    r = _train(images, labels, seed=0, epochs=epochs, batch_size=batch_size,
               min_steps=min_steps, weak_augment="none", strong_augment="none")
    assert (r.epochs, r.steps) == (want_epochs, want_steps)
    assert len(r.losses) == want_epochs
    assert r.seconds >= 0


def test_training_rejects_integer_images_and_bad_shapes():
    images, labels = _tiny()
    with pytest.raises(ValueError, match="float"):
        _train((images * 50).clamp(0, 255).to(torch.uint8), labels, seed=0)
    with pytest.raises(ValueError, match="labels"):
        _train(images, labels[:-1], seed=0)
    with pytest.raises(ValueError):
        _train(images[0], labels[:1], seed=0)
    with pytest.raises(ValueError):
        _train(images[:0], labels[:0], seed=0)


COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]


@pytest.fixture(scope="module")
def colour_problem():
    """4 classes of 16x16 images, each a distinct flat colour plus a little noise."""
    g = torch.Generator().manual_seed(0)
    per_class = 8
    images, labels = [], []
    for c, rgb in enumerate(COLOURS):
        base = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
        noise = torch.randint(-15, 16, (per_class, 3, 16, 16), generator=g).float()
        images.append((base + noise).clamp(0, 255).to(torch.uint8))
        labels += [c] * per_class
    images, labels = torch.cat(images), torch.tensor(labels)
    norm = Normalization.from_images(images)
    result = train_hashing_network(
        norm.normalize(images), labels, method=DHD(), bits=16, num_classes=4,
        config=TrainConfig(epochs=40, batch_size=32, precision="fp32", device="cpu"),
        seed=0, progress=False,
    )
    return images, labels, norm, result


def test_loss_decreases_on_separable_problem(colour_problem):
    _, _, _, result = colour_problem
    losses = result.losses
    assert len(losses) == 40 and result.steps == 40
    assert all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.5 * first


def test_encode_after_training_separates_classes(colour_problem):
    images, labels, norm, result = colour_problem
    codes = encode_images(result.model, images, norm.normalize, batch_size=7, precision="fp32")
    assert codes.dtype == torch.int8
    assert codes.shape == (len(images), 16)
    assert set(codes.unique().tolist()) <= {-1, 1}
    # chunking does not change the codes, and they are the model's own signs
    whole = encode_images(result.model, images, norm.normalize, batch_size=1000,
                          precision="fp32")
    assert torch.equal(codes, whole)
    assert torch.equal(codes, result.model.encode(norm.normalize(images)))
    m = mean_average_precision(codes, codes, labels, labels)
    assert m >= 0.9


def test_encode_images_empty():
    net = _net(0)
    out = encode_images(net, torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                        Normalization((0.5,), (0.25,)).normalize, precision="fp32")
    assert out.dtype == torch.int8 and out.numel() == 0


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _meta(bits: int = 8) -> dict:
    return {"backbone": "convnet3", "bits": bits, "num_classes": 3, "in_channels": 1,
            "resolution": 8, "normalization": {"mean": [0.5], "std": [0.25]}}


def test_checkpoint_round_trip_identical_outputs(tmp_path):
    method = DHD(tau=0.3, lambda_quant=0.05)
    model = _net(11, method=method)  # seed 11: loading (which builds from seed 0) must overwrite
    with torch.no_grad():
        model.head.norm.weight.mul_(1.7)  # buffers/params that differ from any fresh init
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    out = save_hashing_model(tmp_path / "m", model, method, _meta())
    assert out == tmp_path / "m"
    assert {p.name for p in out.iterdir()} == {WEIGHTS, META}  # no temp files left
    loaded, meta = load_hashing_model(out)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert meta["bits"] == 8 and meta["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert meta["hash_method"]["name"] == "dhd"
    assert meta["hash_method"]["tau"] == 0.3
    assert meta["hash_method"]["lambda_quant"] == 0.05


def test_checkpoint_missing_meta_key_raises(tmp_path):
    meta = _meta()
    del meta["normalization"]
    with pytest.raises(ValueError, match="normalization"):
        save_hashing_model(tmp_path, _net(0), DHD(), meta)
    assert not (tmp_path / WEIGHTS).exists()


def test_checkpoint_refuses_weights_of_another_bits_setting(tmp_path):
    save_hashing_model(tmp_path, _net(0, bits=16), DHD(), _meta(bits=16))
    meta_path = tmp_path / META
    meta = json.loads(meta_path.read_text())
    meta["bits"] = 32
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match"):
        load_hashing_model(tmp_path)


def test_checkpoint_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_hashing_model(tmp_path)
    assert str(tmp_path / META) in str(e.value)
    save_hashing_model(tmp_path, _net(0), DHD(), _meta())
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_hashing_model(tmp_path)
    assert str(tmp_path / WEIGHTS) in str(e.value)


# ----------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------


def test_normalization_from_images_exact():
    # channel 0 pixels: 0, 255, 51, 102 (over two images); channel 1 constant 255
    images = torch.tensor(
        [[[[0, 255]], [[255, 255]]], [[[51, 102]], [[255, 255]]]], dtype=torch.uint8
    )
    assert images.shape == (2, 2, 1, 2)
    norm = Normalization.from_images(images)
    ch0 = np.array([0, 255, 51, 102], dtype=np.float64) / 255
    assert norm.mean[0] == pytest.approx(ch0.mean(), abs=1e-6)
    assert norm.mean[1] == pytest.approx(1.0, abs=1e-6)
    # torch.std_mean default: the sample (n - 1) standard deviation
    assert norm.std[0] == pytest.approx(ch0.std(ddof=1), abs=1e-6)
    # a constant channel gets the floor std, never 0
    assert norm.std[1] == pytest.approx(1e-3)
    assert all(isinstance(v, float) for v in (*norm.mean, *norm.std))
    assert images.dtype == torch.uint8 and images[0, 0, 0, 1] == 255  # input untouched


def test_normalization_from_images_does_not_modify_float_input():
    images = torch.full((2, 1, 2, 2), 255.0)
    try:
        Normalization.from_images(images)
    except ValueError:
        return  # refusing non-uint8 input is fine too
    assert torch.equal(images, torch.full((2, 1, 2, 2), 255.0))


def test_normalize_values_and_round_trip():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 4, 4), generator=g, dtype=torch.uint8)
    norm = Normalization((0.1, 0.5, 0.9), (0.2, 0.3, 0.4))
    x = norm.normalize(images)
    assert x.dtype == torch.float32
    assert x[1, 2, 3, 0].item() == pytest.approx((images[1, 2, 3, 0].item() / 255 - 0.9) / 0.4,
                                                 rel=1e-5)
    back = norm.denormalize(x)
    assert torch.allclose(back, images.float() / 255, atol=1e-6)
    assert torch.equal(torch.round(back * 255).to(torch.uint8), images)
    assert norm.denormalize(torch.full((1, 3, 1, 1), 1e3)).max() == 1.0  # clamped


def test_normalization_from_images_standardises():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 6, 6), generator=g, dtype=torch.uint8)
    x = Normalization.from_images(images).normalize(images)
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize(
    ("mean", "std"),
    [((0.5,), (0.0,)), ((0.5,), (-1.0,)), ((0.5, 0.5), (0.2,)), ((), ())],
)
def test_normalization_rejects_bad_stats(mean, std):
    with pytest.raises(ValueError):
        Normalization(mean, std)


def test_normalization_to_dict():
    n = Normalization((0.1, 0.2), (0.3, 0.4))
    assert n.to_dict() == {"mean": [0.1, 0.2], "std": [0.3, 0.4]}
    d = n.to_dict()
    assert Normalization(tuple(d["mean"]), tuple(d["std"])) == n


# ----------------------------------------------------------------------------------------------
# Runtime
# ----------------------------------------------------------------------------------------------


def test_resolve_precision():
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16
    assert resolve_precision("auto", CPU) in (None, torch.bfloat16)
    for bad in ("fp16", "FP32", ""):
        with pytest.raises(ValueError, match="precision"):
            resolve_precision(bad, CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_resolve_device_cpu_only():
    assert resolve_device("auto") == CPU
    assert resolve_device() == CPU
    assert resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


def test_resolve_device_rejects_unknown_name_with_value_error():
    with pytest.raises(ValueError, match="bogus"):
        resolve_device("bogus")


@pytest.mark.parametrize("mode", ["S", "C"])
def test_the_strong_view_composes_its_families_in_the_configured_mode(mode):
    """One step, weak view off: the recorded loss is the one recomputed by hand with the
    strong view drawn in ``mode`` from the trainer's generator, replayed (S: one of colour and
    flip; C: both, as IDC's evaluation)."""
    from hashcondense.augment import DSAConfig, dsa

    images, labels = _tiny(n=6, channels=1)
    seed, method, strong = 7, DHD(), "color_flip"
    cfg = TrainConfig(epochs=1, batch_size=6, weak_augment="none", strong_augment=strong,
                      strong_augment_mode=mode, precision="fp32", device="cpu")
    run = train_hashing_network(images, labels, method=method, bits=8, num_classes=3,
                                config=cfg, seed=seed, progress=False)

    def replayed(replay_mode: str) -> float:
        g = torch.Generator().manual_seed(seed + 1_000_003)
        order = torch.randperm(6, generator=g)
        x, y = images[order], labels[order]
        x_strong = dsa(x, DSAConfig(strategy=strong, mode=replay_mode), generator=g)
        net = build_hashing_network(method, backbone="convnet3", bits=8, num_classes=3,
                                    in_channels=1, resolution=8, seed=seed)
        net.train()
        codes = net(torch.cat([x, x_strong]))
        return method.loss(HashBatch(codes[:6], codes[6:], y), net.head).item()

    assert run.losses[0] == pytest.approx(replayed(mode), rel=1e-5)
    other = "S" if mode == "C" else "C"
    assert run.losses[0] != pytest.approx(replayed(other), rel=1e-5)  # so the test can fail
