"""Tests for differentiable siamese augmentation (hashcondense.augment)."""

from __future__ import annotations

import pytest
import torch

from hashcondense.augment import (
    FAMILIES,
    DSAConfig,
    DSAParams,
    apply_cutmix,
    apply_dsa,
    composed_families,
    dsa,
    sample_cutmix,
    sample_dsa_params,
    siamese_dsa,
)

STRATEGIES = [*FAMILIES, "M"]  # "M": every family in sequence


def _config(name: str, **kw: float) -> DSAConfig:
    if name == "M":
        return DSAConfig(mode="M", **kw)
    return DSAConfig(strategy=name, **kw)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=_gen(1000 + seed))


@pytest.mark.parametrize("name", STRATEGIES)
def test_siamese_same_transform_on_batches_of_different_sizes(name: str) -> None:
    a, b = _batch(5, seed=1), _batch(3, seed=2)
    cfg = _config(name)
    for seed in range(4):
        out_a, out_ab = siamese_dsa(a, torch.cat([a[:1], b]), config=cfg, generator=_gen(seed))
        assert out_a.shape == a.shape and out_ab.shape == (4, *a.shape[1:])
        torch.testing.assert_close(out_a[0], out_ab[0], rtol=0, atol=1e-6)
        # Identical inputs get identical outputs: the draw is shared by every sample.
        same = a[:1].expand(6, -1, -1, -1).contiguous()
        params = sample_dsa_params(cfg, 1, generator=_gen(seed), siamese=True, height=16, width=16)
        out = apply_dsa(same, params)
        torch.testing.assert_close(out, out[:1].expand_as(out), rtol=0, atol=1e-6)
        # The same params give the same result on B alone and on B inside a bigger batch.
        torch.testing.assert_close(
            apply_dsa(b, params), apply_dsa(torch.cat([a, b]), params)[5:], rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("siamese", [True, False])
def test_gradients_reach_input(name: str, siamese: bool) -> None:
    x = _batch(4).requires_grad_()
    out = dsa(x, _config(name), generator=_gen(3), siamese=siamese)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", STRATEGIES)
def test_determinism(name: str) -> None:
    x = _batch(8)
    cfg = _config(name)
    if name == "flip":
        cfg = DSAConfig(strategy="flip", prob_flip=0.5)
    first = [dsa(x, cfg, generator=_gen(7)) for _ in range(2)]
    torch.testing.assert_close(first[0], first[1], rtol=0, atol=0)
    others = [dsa(x, cfg, generator=_gen(s)) for s in range(8, 12)]
    assert any(not torch.equal(first[0], o) for o in others)


def test_mode_s_picks_one_family_and_covers_all() -> None:
    cfg = DSAConfig()
    seen = set()
    g = _gen(0)
    for _ in range(60):
        p = sample_dsa_params(cfg, 2, generator=g, siamese=False, height=8, width=8)
        assert len(p.families) == 1
        seen.add(p.families[0])
    assert seen == set(FAMILIES)
    p = sample_dsa_params(DSAConfig(mode="M"), 2, generator=g, siamese=True, height=8, width=8)
    assert p.families == tuple(DSAConfig().strategy.split("_"))


def test_mode_c_composes_as_idc_flip_colour_one_geometric_then_cutout() -> None:
    """IDC's DiffAug: flip and colour on every call, one of the other families drawn per call,
    cutout always last, whatever order the strategy string lists them in."""
    seen = set()
    g = _gen(0)
    for strategy in ("color_crop_cutout_flip_scale_rotate", "rotate_cutout_scale_crop_flip_color"):
        for _ in range(40):
            p = sample_dsa_params(DSAConfig(strategy=strategy, mode="C"), 3, generator=g,
                                  siamese=False, height=8, width=8)
            assert p.families[:2] == ("flip", "color") and p.families[-1] == "cutout"
            assert len(p.families) == 4 and p.families[2] in ("crop", "scale", "rotate")
            assert p.flip is not None and p.brightness is not None and p.cutout is not None
            seen.add(p.families[2])
    assert seen == {"crop", "scale", "rotate"}
    only_fixed = DSAConfig(strategy="cutout_color", mode="C")
    assert sample_dsa_params(only_fixed, 1, generator=g, siamese=True, height=8,
                             width=8).families == ("color", "cutout")
    assert composed_families(("crop",), g) == ("crop",)
    for _ in range(10):
        assert sample_dsa_params(DSAConfig(strategy="crop_scale", mode="C"), 1, generator=g,
                                 siamese=True, height=8, width=8).families in (("crop",),
                                                                               ("scale",))
    assert sample_dsa_params(DSAConfig(strategy="none", mode="C"), 1, generator=g,
                             siamese=True, height=8, width=8).families == ()
    x = _batch(4)  # the draw is applied as drawn: every image flipped, then its colour draw
    p = sample_dsa_params(DSAConfig(strategy="color_flip", mode="C", prob_flip=1.0), 4,
                          generator=_gen(3), siamese=False, height=16, width=16)
    colour_only = DSAParams(families=("color",), n=4, siamese=False, height=16, width=16,
                            brightness=p.brightness, saturation=p.saturation,
                            contrast=p.contrast)
    torch.testing.assert_close(apply_dsa(x, p), apply_dsa(x.flip(3), colour_only))


def test_flip_mirrors() -> None:
    x = _batch(4, h=8, w=12)
    out = dsa(x, DSAConfig(strategy="flip", prob_flip=1.0), generator=_gen(0))
    torch.testing.assert_close(out, torch.flip(x, dims=[3]), rtol=0, atol=0)
    out = dsa(x, DSAConfig(strategy="flip", prob_flip=0.0), generator=_gen(0))
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_crop_zeroes_uncovered_band() -> None:
    n, h, w = 64, 32, 24
    x = torch.ones(n, 2, h, w)
    cfg = DSAConfig(strategy="crop")
    p = sample_dsa_params(cfg, n, generator=_gen(0), siamese=False, height=h, width=w)
    assert p.crop is not None
    out = apply_dsa(x, p)
    max_y, max_x = round(0.125 * h), round(0.125 * w)  # 4, 3
    assert p.crop[:, 0].abs().max() <= max_y and p.crop[:, 1].abs().max() <= max_x
    assert p.crop[:, 0].abs().max() == max_y  # full range reached over 64 draws
    for i in range(n):
        dy, dx = int(p.crop[i, 0]), int(p.crop[i, 1])
        expect = torch.ones(h, w)
        if dy > 0:
            expect[h - dy :] = 0
        elif dy < 0:
            expect[:-dy] = 0
        if dx > 0:
            expect[:, w - dx :] = 0
        elif dx < 0:
            expect[:, :-dx] = 0
        torch.testing.assert_close(out[i], expect.expand(2, h, w), rtol=0, atol=0)
    # Interior content is translated, not resampled.
    ramp = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    p1 = DSAParams(("crop",), 1, True, h, w, crop=torch.tensor([[2, -3]]))
    shifted = apply_dsa(ramp, p1)[0, 0]
    torch.testing.assert_close(shifted[: h - 2, 3:], ramp[0, 0, 2:, : w - 3])


def test_cutout_zeroes_square_of_right_side() -> None:
    n, h = 64, 32
    side = round(0.5 * h)
    x = torch.ones(n, 3, h, h)
    p = sample_dsa_params(DSAConfig(strategy="cutout"), n, generator=_gen(0), siamese=False,
                          height=h, width=h)
    assert p.cutout_size == (side, side) and p.cutout is not None
    out = apply_dsa(x, p)
    zeros = (out == 0).sum(dim=(2, 3))  # (n, C)
    assert (zeros == zeros[:, :1]).all()  # same box on every channel
    counts = zeros[:, 0]
    assert counts.max() == side * side and (counts > 0).all()
    for i in range(n):
        y0, x0 = int(p.cutout[i, 0]), int(p.cutout[i, 1])
        ys = min(y0 + side, h) - max(y0, 0)
        xs = min(x0 + side, h) - max(x0, 0)
        assert counts[i] == ys * xs
        rows = (out[i, 0] == 0).any(dim=1).nonzero().flatten()
        assert rows.numel() == ys and int(rows[-1] - rows[0]) + 1 == ys  # one contiguous box


def test_color_brightness_bounded_and_matches_reference_steps() -> None:
    x = _batch(64, h=8, w=8)
    cfg = DSAConfig(strategy="color")
    p = sample_dsa_params(cfg, 64, generator=_gen(0), siamese=False, height=8, width=8)
    out = apply_dsa(x, p)
    assert p.brightness is not None and p.saturation is not None and p.contrast is not None
    shift = out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
    assert shift.abs().max() <= 0.5 + 1e-5  # saturation and contrast preserve the image mean
    torch.testing.assert_close(shift, p.brightness, atol=1e-5, rtol=0)
    assert (p.saturation >= 0).all() and (p.saturation <= 2).all()
    assert (p.contrast >= 0.5).all() and (p.contrast <= 1.5).all()
    # The fused implementation equals the three reference steps done one by one.
    b, s, k = (t.view(-1, 1, 1, 1) for t in (p.brightness, p.saturation, p.contrast))
    ref = x + b
    m = ref.mean(dim=1, keepdim=True)
    ref = (ref - m) * s + m
    m = ref.mean(dim=(1, 2, 3), keepdim=True)
    ref = (ref - m) * k + m
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["scale", "rotate"])
@pytest.mark.parametrize("shape", [(16, 16), (12, 20)])
def test_scale_rotate_identity(name: str, shape: tuple[int, int]) -> None:
    x = _batch(3, h=shape[0], w=shape[1])
    cfg = DSAConfig(strategy=name, ratio_scale=1.0, ratio_rotate=0.0)
    for siamese in (True, False):
        out = dsa(x, cfg, generator=_gen(0), siamese=siamese)
        torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_scale_rotate_change_image_and_stay_in_range() -> None:
    x = _batch(4)
    g = _gen(0)
    p = sample_dsa_params(DSAConfig(strategy="scale"), 4, generator=g, siamese=False,
                          height=16, width=16)
    assert p.scale is not None
    assert (p.scale >= 1 / 1.2 - 1e-6).all() and (p.scale <= 1.2 + 1e-6).all()
    assert not torch.allclose(apply_dsa(x, p), x)
    p = sample_dsa_params(DSAConfig(strategy="rotate"), 4, generator=g, siamese=False,
                          height=16, width=16)
    assert p.rotate is not None
    assert p.rotate.abs().max() <= torch.pi / 12 + 1e-6
    assert not torch.allclose(apply_dsa(x, p), x)
    # A 90-degree rotation of a square image is an exact pixel permutation.
    p90 = DSAParams(("rotate",), 1, True, 16, 16, rotate=torch.tensor([torch.pi / 2]))
    out = apply_dsa(x, p90)
    rotated = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert any(torch.allclose(out, r, atol=1e-5) for r in rotated)


def test_non_siamese_params_differ_per_sample() -> None:
    n = 32
    p = sample_dsa_params(DSAConfig(mode="M"), n, generator=_gen(0), siamese=False,
                          height=32, width=32)
    assert p.n == n and not p.siamese
    for field in ("scale", "rotate", "flip", "brightness", "saturation", "contrast", "crop",
                  "cutout"):
        t = getattr(p, field)
        assert t is not None and t.shape[0] == n
        assert torch.unique(t.float(), dim=0).shape[0] > 1, field
    ps = sample_dsa_params(DSAConfig(mode="M"), n, generator=_gen(0), siamese=True,
                           height=32, width=32)
    assert ps.n == 1 and ps.siamese and ps.scale is not None and ps.scale.shape[0] == 1
    # Non-siamese: identical images come out different.
    x = _batch(1).expand(8, -1, -1, -1).contiguous()
    out = dsa(x, DSAConfig(strategy="rotate"), generator=_gen(0))
    assert not torch.allclose(out[0], out[1])


def test_batch_size_mismatch_raises() -> None:
    p = sample_dsa_params(DSAConfig(), 4, generator=_gen(0), siamese=False, height=8, width=8)
    with pytest.raises(ValueError, match="n=4"):
        apply_dsa(torch.zeros(3, 3, 8, 8), p)
    with pytest.raises(ValueError, match="8x8"):
        apply_dsa(torch.zeros(4, 3, 8, 9), p)


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError, match="blur"):
        DSAConfig(strategy="color_blur")
    with pytest.raises(ValueError, match="mode"):
        DSAConfig(mode="X")
    with pytest.raises(ValueError, match="prob_flip"):
        DSAConfig(prob_flip=1.5)


def test_none_strategy_is_identity() -> None:
    x = _batch(2)
    torch.testing.assert_close(dsa(x, DSAConfig(strategy="none"), generator=_gen(0)), x)


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_and_bf16_autocast(name: str, channels: int) -> None:
    x = _batch(4, c=channels, h=12, w=10)
    cfg = _config(name)
    ref = dsa(x, cfg, generator=_gen(5))
    out_cl = dsa(x.contiguous(memory_format=torch.channels_last), cfg, generator=_gen(5))
    assert out_cl.shape == x.shape and out_cl.dtype == torch.float32
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = dsa(x, cfg, generator=_gen(5))
        out_bf = dsa(x.bfloat16(), cfg, generator=_gen(5), siamese=True)
    for o in (out_ac, out_bf):
        assert o.shape == x.shape
        assert o.dtype in (torch.float32, torch.bfloat16)
        assert torch.isfinite(o.float()).all()
    torch.testing.assert_close(out_ac.float(), ref, atol=0.1, rtol=0.05)


def test_take_expands_group_draws_to_a_siamese_transform_per_group():
    """One non-siamese draw per class, expanded with take(), transforms every image of a class
    exactly as a siamese draw would transform that class alone."""
    from hashcondense.augment import DSAConfig, apply_dsa, sample_dsa_params

    torch.manual_seed(0)
    for family in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        config = DSAConfig(strategy=family, prob_flip=0.5)
        gen = torch.Generator().manual_seed(3)
        params = sample_dsa_params(config, 3, generator=gen, siamese=False, height=12, width=12)
        groups = torch.tensor([0, 0, 1, 2, 2, 2])
        x = torch.randn(6, 3, 12, 12)
        out = apply_dsa(x, params.take(groups))
        for g in range(3):
            alone = apply_dsa(x[groups == g], params.take(torch.full(((groups == g).sum(),), g)))
            torch.testing.assert_close(out[groups == g], alone)
        # images of the same group with identical content stay identical
        y = x.clone()
        y[1] = y[0]
        out_y = apply_dsa(y, params.take(groups))
        torch.testing.assert_close(out_y[0], out_y[1])


# -- CutMix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "beta"), [(8, 8, 1.0), (5, 12, 0.3), (32, 32, 4.0)])
def test_cutmix_box_lies_in_the_image_and_ratio_is_the_kept_area(height, width, beta):
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        mix = sample_cutmix(6, height, width, beta=beta, generator=g)
        (r0, r1), (c0, c1) = mix.rows, mix.cols
        assert 0 <= r0 <= r1 <= height and 0 <= c0 <= c1 <= width
        assert mix.ratio == pytest.approx(1 - (r1 - r0) * (c1 - c0) / (height * width))
        assert sorted(mix.perm.tolist()) == list(range(6))


def test_cutmix_pastes_the_permuted_samples_box_and_keeps_the_rest():
    x = torch.randn(5, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    mix = next(m for m in (sample_cutmix(5, 10, 10, beta=1.0, generator=g) for _ in range(100))
               if 0 < m.ratio < 1)
    out = apply_cutmix(x, mix)
    inside = torch.zeros(10, 10, dtype=torch.bool)
    inside[mix.rows[0]:mix.rows[1], mix.cols[0]:mix.cols[1]] = True
    for i in range(5):  # brute force, pixel by pixel
        j = int(mix.perm[i])
        assert torch.equal(out[i][:, inside], x[j][:, inside])
        assert torch.equal(out[i][:, ~inside], x[i][:, ~inside])
    assert not torch.equal(out, x)  # x itself untouched, the result a new tensor


def test_cutmix_draws_are_reproducible_and_follow_the_generator():
    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return [(m.rows, m.cols, m.ratio, m.perm.tolist())
                for m in (sample_cutmix(8, 16, 16, beta=1.0, generator=g) for _ in range(5))]

    torch.manual_seed(0)
    first = draws(3)
    torch.manual_seed(1)  # the global RNG plays no part: only the explicit generator does
    assert first == draws(3) != draws(4)
    with pytest.raises(ValueError, match="beta"):
        sample_cutmix(4, 8, 8, beta=0.0, generator=torch.Generator())


def test_cutmix_area_follows_beta():
    # lambda ~ Beta(1, 1) is uniform, so the pasted share of an unclipped box averages ~1/2
    # before clipping; clipping only removes area, and a large beta concentrates lambda at 1/2
    g = torch.Generator().manual_seed(0)
    kept = torch.tensor([sample_cutmix(2, 64, 64, beta=1.0, generator=g).ratio
                         for _ in range(2000)])
    assert 0.5 < kept.mean() < 0.8 and kept.min() >= 0 and kept.max() <= 1
    peaked = torch.tensor([sample_cutmix(2, 64, 64, beta=50.0, generator=g).ratio
                           for _ in range(500)])
    assert peaked.std() < kept.std()
