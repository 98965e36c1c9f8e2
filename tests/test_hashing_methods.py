"""DPN and OrthoHash: codebooks, losses by hand, heads, checkpoints and end-to-end training.

The generic ``HashMethod`` contract (shapes, finite losses, gradients) is checked for every
registered method in test_hashing.py; this file covers what is specific to the two methods.
"""

from __future__ import annotations

import math

import pytest
import torch

from hashcondense.hashing import HASH_METHODS, HashBatch, build_hash_method
from hashcondense.hashing.checkpoint import load_hashing_model, save_hashing_model
from hashcondense.hashing.dpn import (
    DPN,
    DPNHead,
    class_codebook,
    greedy_codes,
    polarization_loss,
    random_codes,
)
from hashcondense.hashing.orthohash import (
    OrthoHash,
    OrthoHashHead,
    cosine_margin_loss,
    cosine_quantization_loss,
)
from hashcondense.hashing.trainer import (
    TrainConfig,
    build_hashing_network,
    encode_images,
    train_hashing_network,
)
from hashcondense.normalization import Normalization
from hashcondense.retrieval import mean_average_precision

METHODS = {"dpn": DPN, "orthohash": OrthoHash}


def _min_hamming(codes: torch.Tensor) -> float:
    """Smallest Hamming distance between two different rows of a ±1 matrix."""
    dist = (codes.shape[1] - codes @ codes.T) / 2
    dist.fill_diagonal_(float("inf"))
    return dist.min().item()


@pytest.mark.parametrize(("name", "cls"), list(METHODS.items()))
def test_registered_one_view(name, cls):
    assert name in HASH_METHODS
    method = build_hash_method(name)
    assert isinstance(method, cls)
    assert method.name == name
    assert method.two_views is False


# ----------------------------------------------------------------------------------------------
# Codebooks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "greedy"])
def test_codebook_deterministic_binary_and_rng_neutral(kind):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = class_codebook(10, 16, seed=3, method=kind)
    torch.manual_seed(999)  # the global stream plays no part
    b = class_codebook(10, 16, seed=3, method=kind)
    c = class_codebook(10, 16, seed=4, method=kind)
    assert a.shape == (10, 16) and a.dtype == torch.float32
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(123)
    class_codebook(10, 16, seed=3, method=kind)
    assert torch.equal(torch.get_rng_state(), before)


def test_random_codes_are_roughly_balanced():
    codes = random_codes(200, 64, torch.Generator().manual_seed(0))
    assert abs(codes.mean().item()) < 0.05  # Bernoulli(0.5) bits


@pytest.mark.parametrize(("classes", "bits"), [(10, 16), (10, 8), (20, 12), (100, 32)])
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_codebook_spreads_classes_at_least_as_far_as_random(classes, bits, seed):
    rand = class_codebook(classes, bits, seed=seed, method="random")
    greedy = class_codebook(classes, bits, seed=seed, method="greedy")
    assert _min_hamming(greedy) >= _min_hamming(rand)
    assert _min_hamming(greedy) > 0  # no two classes share a code


def test_greedy_codes_on_fixed_seed_beat_random_strictly():
    rand = class_codebook(10, 16, seed=0)
    greedy = class_codebook(10, 16, seed=0, method="greedy")
    assert _min_hamming(greedy) > _min_hamming(rand)  # 6 vs 3 with torch 2.13


def test_greedy_codes_single_candidate_is_random():
    # with one candidate per class there is nothing to choose: the plain random stream
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(greedy_codes(6, 8, g1, candidates=1), random_codes(6, 8, g2))


@pytest.mark.parametrize(
    ("args", "match"), [((0, 8, "random"), "num_classes"), ((3, 0, "random"), "bits"),
                        ((3, 8, "hadamard"), "codebook")]
)
def test_codebook_rejects_bad_arguments(args, match):
    classes, bits, kind = args
    with pytest.raises(ValueError, match=match):
        class_codebook(classes, bits, seed=0, method=kind)


@pytest.mark.parametrize("cls", [DPN, OrthoHash])
def test_head_codebook_is_a_seeded_buffer_not_a_parameter(cls):
    method = cls(seed=7, codebook="greedy")
    torch.manual_seed(0)
    h1 = method.make_head(24, 16, 5)
    torch.manual_seed(1)  # other network init, same codebook
    h2 = method.make_head(24, 16, 5)
    assert torch.equal(h1.codebook, class_codebook(5, 16, seed=7, method="greedy"))
    assert torch.equal(h1.codebook, h2.codebook)
    assert not torch.equal(h1.fc.weight, h2.fc.weight)
    assert "codebook" in h1.state_dict()
    assert all(p is not h1.codebook for p in h1.parameters())
    assert not torch.equal(cls(seed=8, codebook="greedy").make_head(24, 16, 5).codebook,
                           h1.codebook)


# ----------------------------------------------------------------------------------------------
# DPN by hand
# ----------------------------------------------------------------------------------------------


def test_polarization_loss_zero_beyond_margin():
    t = class_codebook(4, 12, seed=0)
    assert polarization_loss(1.5 * t, t).item() == 0.0
    assert polarization_loss(t, t).item() == 0.0  # exactly at the margin: no loss either
    assert polarization_loss(3 * t, t, margin=2.0, reduction="sum").item() == 0.0
    assert polarization_loss(t, t, margin=2.0).item() == pytest.approx(1.0)


def test_polarization_loss_hand_values():
    v = torch.tensor([[0.5, -2.0, 0.0]])
    t = torch.tensor([[1.0, 1.0, -1.0]])
    # bits: max(0, 1 - 0.5) = 0.5, max(0, 1 + 2) = 3, max(0, 1 - 0) = 1
    assert polarization_loss(v, t).item() == pytest.approx(4.5 / 3)
    assert polarization_loss(v, t, reduction="sum").item() == pytest.approx(4.5)
    # margin 0.25: 0, 2.25, 0.25; two rows average over the batch
    v2 = torch.cat([v, torch.tensor([[2.0, 2.0, -2.0]])])
    t2 = torch.cat([t, t])
    assert polarization_loss(v2, t2, 0.25).item() == pytest.approx(2.5 / 6)
    assert polarization_loss(v2, t2, 0.25, "sum").item() == pytest.approx(2.5 / 2)


def test_polarization_gradient_only_on_bits_inside_margin():
    v = torch.tensor([[0.5, 2.0, -0.2, -3.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    polarization_loss(v, t).backward()
    # d/dv max(0, 1 - v t) = -t / 4 where active; bits 1 and 3 are beyond the margin
    assert v.grad.tolist() == [[-0.25, 0.0, -0.25, 0.0]]


def test_dpn_loss_uses_class_targets_and_reg():
    method = DPN(margin=0.5, reg=0.3, bit_reduction="sum", seed=2)
    head = method.make_head(10, 8, 3)
    torch.manual_seed(0)
    codes, labels = torch.randn(5, 8), torch.tensor([0, 2, 1, 1, 0])
    got = method.loss(HashBatch(codes, None, labels), head)
    targets = head.codebook[labels]
    hinge = sum(max(0.0, 0.5 - a * b) for a, b in zip(codes.flatten().tolist(),
                                                       targets.flatten().tolist(), strict=True))
    expected = hinge / 5 + 0.3 * codes.pow(2).mean().item()
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # perfect codes beyond the margin: only the regulariser is left
    perfect = 2 * targets
    assert method.loss(HashBatch(perfect, None, labels), head).item() == pytest.approx(0.3 * 4)
    assert DPN(seed=2).loss(HashBatch(perfect, None, labels), head).item() == 0.0


def test_dpn_head_is_linear_without_activation():
    torch.manual_seed(0)
    head = DPNHead(20, 12, 5, seed=0, codebook="random")
    assert head.fc.bias is None
    assert head.fc.weight.std().item() == pytest.approx(0.01, rel=0.2)
    x = 1e3 * torch.randn(9, 20)
    out = head(x)
    assert out.shape == (9, 12)
    assert torch.equal(out, x @ head.fc.weight.T)
    assert out.abs().max() > 1  # unbounded: no tanh
    assert head.codebook.shape == (5, 12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"margin": 0.0}, "margin"), ({"margin": float("nan")}, "margin"), ({"reg": -1.0}, "reg"),
     ({"bit_reduction": "max"}, "bit_reduction"), ({"codebook": "hadamard"}, "codebook")],
)
def test_dpn_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPN(**kwargs)


def test_dpn_defaults():
    m = DPN()
    assert (m.margin, m.reg, m.bit_reduction, m.codebook, m.seed) == (1.0, 0.0, "mean",
                                                                      "random", 0)


# ----------------------------------------------------------------------------------------------
# OrthoHash by hand
# ----------------------------------------------------------------------------------------------


def test_cosine_margin_loss_matches_hand_cross_entropy():
    codes = [[1.0, 2.0], [-1.0, 0.5]]
    codebook = [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]
    labels = [0, 2]
    s, m = 2.0, 0.3
    total = 0.0
    for v, y in zip(codes, labels, strict=True):
        nv = math.hypot(*v)
        cos = [(v[0] * o[0] + v[1] * o[1]) / (nv * math.sqrt(2)) for o in codebook]
        logits = [s * (c - (m if j == y else 0.0)) for j, c in enumerate(cos)]
        total += math.log(sum(math.exp(z) for z in logits)) - logits[y]
    got = cosine_margin_loss(torch.tensor(codes), torch.tensor(codebook), torch.tensor(labels),
                             s, m)
    assert got.ndim == 0
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


def test_margin_raises_the_loss_and_codes_scale_does_not_matter():
    torch.manual_seed(0)
    codebook = class_codebook(4, 16, seed=0)
    codes, labels = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    plain = cosine_margin_loss(codes, codebook, labels, 8.0, 0.0)
    margin = cosine_margin_loss(codes, codebook, labels, 8.0, 0.2)
    assert margin > plain
    assert cosine_margin_loss(codes, codebook, labels, 8.0, 0.4) > margin
    scaled = cosine_margin_loss(5 * codes, codebook, labels, 8.0, 0.2)
    assert scaled.item() == pytest.approx(margin.item(), rel=1e-5)
    # the method uses the same function with its own s and m
    method = OrthoHash(scale=8.0, margin=0.2)
    head = method.make_head(10, 16, 4)
    got = method.loss(HashBatch(codes, None, labels), head)
    expected = cosine_margin_loss(codes, head.codebook, labels, 8.0, 0.2)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_codes_on_their_own_codeword_give_low_loss():
    codebook = class_codebook(4, 32, seed=0)
    labels = torch.arange(4)
    right = cosine_margin_loss(codebook, codebook, labels, 8.0, 0.2)
    wrong = cosine_margin_loss(codebook.roll(1, dims=0), codebook, labels, 8.0, 0.2)
    assert right < 0.1 < wrong


def test_cosine_quantization_loss_values():
    assert cosine_quantization_loss(torch.tensor([[0.5, -0.5, 0.5]])).item() == pytest.approx(
        0.0, abs=1e-6)
    assert cosine_quantization_loss(torch.tensor([[2.0, 1.0]])).item() == pytest.approx(
        1 - 3 / math.sqrt(10), rel=1e-6)
    method = OrthoHash(lambda_quant=0.5, margin=0.3, scale=4.0)
    head = method.make_head(10, 2, 3)
    codes, labels = torch.tensor([[2.0, 1.0], [-1.0, 3.0]]), torch.tensor([2, 0])
    expected = (cosine_margin_loss(codes, head.codebook, labels, 4.0, 0.3)
                + 0.5 * cosine_quantization_loss(codes))
    got = method.loss(HashBatch(codes, None, labels), head)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_orthohash_head_is_linear_then_batchnorm():
    torch.manual_seed(0)
    head = OrthoHashHead(20, 12, 5, seed=0, codebook="random")
    assert head.fc.bias is None
    assert isinstance(head.norm, torch.nn.BatchNorm1d)
    out = head(3 * torch.randn(64, 20) + 1)
    assert torch.allclose(out.mean(0), torch.zeros(12), atol=1e-5)  # train mode: batch stats
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(12), atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"scale": 0.0}, "scale"), ({"scale": float("inf")}, "scale"), ({"margin": -0.1}, "margin"),
     ({"lambda_quant": -1.0}, "lambda_quant"), ({"codebook": "hadamard"}, "codebook")],
)
def test_orthohash_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrthoHash(**kwargs)


def test_orthohash_defaults():
    m = OrthoHash()
    assert (m.scale, m.margin, m.lambda_quant, m.codebook, m.seed) == (8.0, 0.2, 0.0, "random", 0)


# ----------------------------------------------------------------------------------------------
# Checkpoints: the method's fields and the codebook buffer travel with the model
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [DPN(margin=0.7, reg=1e-3, bit_reduction="sum", codebook="greedy", seed=5),
     OrthoHash(scale=5.5, margin=0.3, lambda_quant=0.1, codebook="greedy", seed=5)],
    ids=["dpn", "orthohash"],
)
def test_checkpoint_round_trip(tmp_path, method):
    model = build_hashing_network(method, backbone="convnet3", bits=8, num_classes=3,
                                  in_channels=1, resolution=8, seed=11)
    with torch.no_grad():
        model.head.codebook[0].neg_()  # the saved codebook, not a regenerated one, must load
        if hasattr(model.head, "norm"):
            model.head.norm.running_mean.add_(0.3)
            model.head.norm.running_var.mul_(2.0)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    meta = {"backbone": "convnet3", "bits": 8, "num_classes": 3, "in_channels": 1,
            "resolution": 8, "normalization": {"mean": [0.5], "std": [0.25]}}
    save_hashing_model(tmp_path, model, method, meta)
    loaded, saved_meta = load_hashing_model(tmp_path)
    assert torch.equal(loaded.head.codebook, model.head.codebook)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    params = dict(saved_meta["hash_method"])
    assert params.pop("name") == method.name
    assert type(method)(**params) == method


# ----------------------------------------------------------------------------------------------
# End to end: each method learns retrieval on a small generated problem
# ----------------------------------------------------------------------------------------------


def _patterns(per_class: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes of 16x16 uint8 images: horizontal stripes, vertical stripes, checkerboard,
    plain. Random phase, random colours and pixel noise: colour says nothing about the class."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    images, labels = [], []
    for c in range(4):
        for _ in range(per_class):
            phase = torch.rand(1, generator=g) * 2 * math.pi
            rows = torch.sin(yy * (math.pi / 2) + phase) > 0
            cols = torch.sin(xx * (math.pi / 2) + phase) > 0
            mask = [rows, cols, rows ^ cols, torch.zeros_like(rows)][c].float()
            fg, bg = (torch.randint(0, 256, (3, 1, 1), generator=g).float() for _ in range(2))
            noise = torch.randint(-40, 41, (3, 16, 16), generator=g)
            images.append((mask * fg + (1 - mask) * bg + noise).clamp(0, 255).to(torch.uint8))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def pattern_problem():
    g = torch.Generator().manual_seed(0)
    train, train_labels = _patterns(16, g)
    query, query_labels = _patterns(8, g)
    return train, train_labels, query, query_labels, Normalization.from_images(train)


def _retrieval_map(model, problem) -> float:
    train, train_labels, query, query_labels, norm = problem
    db = encode_images(model, train, norm.normalize, precision="fp32")
    q = encode_images(model, query, norm.normalize, precision="fp32")
    return mean_average_precision(q, db, query_labels, train_labels)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_to_map_well_above_chance(name, pattern_problem):
    """Held-out queries against the training set; untrained codes sit near chance (~0.3)."""
    train, train_labels, _, _, norm = pattern_problem
    method = build_hash_method(name)
    untrained = build_hashing_network(method, backbone="convnet3", bits=16, num_classes=4,
                                      in_channels=3, resolution=16, seed=0).eval()
    result = train_hashing_network(
        norm.normalize(train), train_labels, method=method, bits=16, num_classes=4,
        config=TrainConfig(epochs=40, batch_size=32, precision="fp32", device="cpu",
                           compile="off"),
        seed=0, progress=False,
    )
    assert all(math.isfinite(v) for v in result.losses)
    assert sum(result.losses[-3:]) < 0.3 * sum(result.losses[:3])
    before, after = _retrieval_map(untrained, pattern_problem), _retrieval_map(result.model,
                                                                                pattern_problem)
    assert before < 0.45
    assert after >= 0.75
    assert after > before + 0.3


def test_codebook_for_many_classes_is_distinct_or_refused():
    """1,000 classes at 16 bits collide by the birthday bound: collisions are redrawn (a class
    sharing another's target code could never be told apart); more classes than codes fail."""
    from hashcondense.hashing.dpn import class_codebook

    codes = class_codebook(1000, 16, seed=0)
    assert codes.shape == (1000, 16) and len(torch.unique(codes, dim=0)) == 1000
    small = class_codebook(10, 64, seed=3)
    assert torch.equal(small, class_codebook(10, 64, seed=3))  # distinct draws are untouched
    assert torch.equal(class_codebook(256, 8, seed=0).abs(), torch.ones(256, 8))
    with pytest.raises(ValueError, match="300 classes.*8 bits give only 256.*--bits 9"):
        class_codebook(300, 8, seed=0)
