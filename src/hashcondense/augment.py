"""Differentiable siamese augmentation (DSA, Zhao & Bilen, ICML 2021).

Every op is written with differentiable tensor ops so the gradient of a matching loss flows
back into synthetic images. Parameters are drawn once (:func:`sample_dsa_params`) and applied
separately (:func:`apply_dsa`): in siamese mode one draw is shared by a real and a synthetic
batch of any sizes, so both see the *identical* transform, which is what makes gradient
matching under augmentation meaningful. In non-siamese mode (training networks on tiny sets)
each sample gets its own parameters.

All ops act on dataset-normalised float tensors ``(N, C, H, W)``. Randomness comes only from an
explicit ``torch.Generator`` so runs are reproducible without touching global RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .settings import DSA_MODES

__all__ = [
    "FAMILIES",
    "composed_families",
    "DSAConfig",
    "DSAParams",
    "sample_dsa_params",
    "apply_dsa",
    "dsa",
    "siamese_dsa",
    "CutMix",
    "sample_cutmix",
    "apply_cutmix",
]

#: Augmentation families accepted in ``DSAConfig.strategy`` ("color" = brightness, saturation,
#: contrast applied in that order, as in the reference).
FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
_NO_AUG = ("", "none")
_ALWAYS_FIRST = ("flip", "color")  # mode C: IDC applies these to every image, in this order


@dataclass(frozen=True)
class DSAConfig:
    """Which families to use and how strong; defaults follow the reference ParamDiffAug."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    # "S": one family per call; "M": every family in sequence; "C": composed as IDC's DiffAug
    # (flip and colour always, then one of the other families per call, cutout always last)
    mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in DSA_MODES:
            raise ValueError(f"DSA mode must be one of {', '.join(DSA_MODES)}, got "
                             f"{self.mode!r}")
        for fam in self.families:
            if fam not in FAMILIES:
                raise ValueError(
                    f"unknown DSA family {fam!r} in strategy {self.strategy!r}; "
                    f"valid families: {', '.join(FAMILIES)}"
                )
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ValueError(f"prob_flip must be in [0, 1], got {self.prob_flip}")
        if self.ratio_scale < 1.0:
            raise ValueError(f"ratio_scale must be >= 1, got {self.ratio_scale}")
        if self.ratio_rotate < 0.0:
            raise ValueError(f"ratio_rotate must be >= 0, got {self.ratio_rotate}")
        if not 0.0 <= self.ratio_crop_pad < 1.0:
            raise ValueError(f"ratio_crop_pad must be in [0, 1), got {self.ratio_crop_pad}")
        if not 0.0 <= self.ratio_cutout <= 1.0:
            raise ValueError(f"ratio_cutout must be in [0, 1], got {self.ratio_cutout}")
        for name in ("brightness", "saturation", "contrast"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def families(self) -> tuple[str, ...]:
        """Families listed in ``strategy`` ("none"/"" means no augmentation)."""
        if self.strategy.strip().lower() in _NO_AUG:
            return ()
        return tuple(self.strategy.split("_"))


@dataclass(frozen=True, eq=False)
class DSAParams:
    """One parameter draw. Tensors have a leading dim of ``n`` (``n == 1`` when siamese).

    ``families`` is the ordered tuple of families to apply (one entry in mode S;
    flip, colour, one drawn family, cutout in mode C). Fields of
    families that were not chosen are ``None``. ``height``/``width`` are the image size the
    pixel-valued parameters (crop shift, cutout box) were drawn for.
    """

    families: tuple[str, ...]
    n: int
    siamese: bool
    height: int
    width: int
    scale: torch.Tensor | None = None  # (n, 2) float: sx, sy
    rotate: torch.Tensor | None = None  # (n,) float: angle in radians
    flip: torch.Tensor | None = None  # (n,) bool
    brightness: torch.Tensor | None = None  # (n,) float: additive shift
    saturation: torch.Tensor | None = None  # (n,) float: factor
    contrast: torch.Tensor | None = None  # (n,) float: factor
    crop: torch.Tensor | None = None  # (n, 2) long: shift (dy, dx) in pixels
    cutout: torch.Tensor | None = None  # (n, 2) long: top-left corner (y0, x0), may be < 0
    cutout_size: tuple[int, int] = (0, 0)  # (side_h, side_w) in pixels

    _TENSORS = ("scale", "rotate", "flip", "brightness", "saturation", "contrast", "crop",
                "cutout")

    def _map(self, fn, n: int) -> DSAParams:
        kw = {}
        for name in self._TENSORS:
            t = getattr(self, name)
            kw[name] = None if t is None else fn(t)
        return DSAParams(
            families=self.families, n=n, siamese=self.siamese, height=self.height,
            width=self.width, cutout_size=self.cutout_size, **kw,
        )

    def to(self, device: torch.device | str) -> DSAParams:
        """Copy with every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device), self.n)

    def take(self, index: torch.Tensor) -> DSAParams:
        """Per-sample parameters ``self[index]``: lets one draw per class (n = C, non-siamese)
        act as a siamese draw for every class of a batch that holds several classes."""
        if self.siamese:
            raise ValueError("take() needs non-siamese parameters (one row per group)")
        return self._map(lambda t: t.index_select(0, index.to(t.device)), int(index.numel()))


def concat_params(parts: Sequence[DSAParams]) -> DSAParams:
    """Non-siamese draws of the same families stacked along the batch: per-class draws made
    from per-class generators become one ``n = C`` draw for a batch that holds every class."""
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    for p in parts:
        if p.siamese or p.families != first.families or p.cutout_size != first.cutout_size \
                or (p.height, p.width) != (first.height, first.width):
            raise ValueError("only non-siamese draws of the same families and size concatenate")
    kw = {}
    for name in DSAParams._TENSORS:
        tensors = [getattr(p, name) for p in parts]
        kw[name] = None if tensors[0] is None else torch.cat(tensors)
    return DSAParams(families=first.families, n=sum(p.n for p in parts), siamese=False,
                     height=first.height, width=first.width, cutout_size=first.cutout_size,
                     **kw)


def composed_families(fams: tuple[str, ...], g: torch.Generator) -> tuple[str, ...]:
    """IDC's composition: flip, colour, one of the rest (drawn per call), cutout last."""
    rest = [f for f in fams if f not in (*_ALWAYS_FIRST, "cutout")]
    chosen: tuple[str, ...] = ()
    if rest:
        pick = int(torch.randint(len(rest), (1,), generator=g, device=g.device).item())
        chosen = (rest[pick],)
    return (*(f for f in _ALWAYS_FIRST if f in fams), *chosen,
            *(("cutout",) if "cutout" in fams else ()))


def _rand(n: int, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=gen, device=gen.device)


def _randint(low: int, high: int, n: int, gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Integers uniform in ``[low, high]`` inclusive."""
    return torch.randint(low, high + 1, (n, *shape), generator=gen, device=gen.device)


def sample_dsa_params(
    config: DSAConfig,
    n: int,
    *,
    generator: torch.Generator,
    siamese: bool,
    height: int,
    width: int,
    device: torch.device | str | None = None,
) -> DSAParams:
    """Draw augmentation parameters for a batch of ``n`` (ignored, one row, when siamese).

    Draws happen on the generator's device (so results do not depend on ``device``) and are
    then moved to ``device``.
    """
    if not siamese and n < 1:
        raise ValueError(f"n must be >= 1 for non-siamese params, got {n}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    rows = 1 if siamese else n
    g = generator
    fams = config.families
    if config.mode == "S" and fams:
        pick = int(torch.randint(len(fams), (1,), generator=g, device=g.device).item())
        fams = (fams[pick],)
    elif config.mode == "C":
        fams = composed_families(fams, g)

    kw: dict[str, object] = {}
    for fam in fams:
        if fam == "scale":
            lo = 1.0 / config.ratio_scale
            kw["scale"] = _rand(rows, g, 2) * (config.ratio_scale - lo) + lo
        elif fam == "rotate":
            max_rad = config.ratio_rotate / 180.0 * math.pi
            kw["rotate"] = (_rand(rows, g) - 0.5) * 2.0 * max_rad
        elif fam == "flip":
            kw["flip"] = _rand(rows, g) < config.prob_flip
        elif fam == "color":
            kw["brightness"] = (_rand(rows, g) - 0.5) * config.brightness
            kw["saturation"] = _rand(rows, g) * config.saturation
            kw["contrast"] = _rand(rows, g) + config.contrast
        elif fam == "crop":
            sy = int(height * config.ratio_crop_pad + 0.5)
            sx = int(width * config.ratio_crop_pad + 0.5)
            dy = _randint(-sy, sy, rows, g)
            dx = _randint(-sx, sx, rows, g)
            kw["crop"] = torch.stack([dy, dx], dim=1)
        elif fam == "cutout":
            ch = int(height * config.ratio_cutout + 0.5)
            cw = int(width * config.ratio_cutout + 0.5)
            cy = _randint(0, height - 1, rows, g)
            cx = _randint(0, width - 1, rows, g)
            kw["cutout"] = torch.stack([cy - ch // 2, cx - cw // 2], dim=1)
            kw["cutout_size"] = (ch, cw)
    params = DSAParams(
        families=fams, n=rows, siamese=siamese, height=height, width=width, **kw  # type: ignore[arg-type]
    )
    return params if device is None else params.to(device)


def _col(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample scalar as an (n, 1, 1, 1) tensor in x's dtype/device for broadcasting."""
    return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp the whole batch with one grid_sample (bilinear, zero padding, align_corners=True)."""
    n = x.shape[0]
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [theta.shape[0], *x.shape[1:]], align_corners=True)
    if grid.shape[0] != n:  # siamese: one grid shared by every sample
        grid = grid.expand(n, -1, -1, -1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def _scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(s.shape[0], 2, 3, device=s.device, dtype=s.dtype)
    theta[:, 0, 0] = s[:, 0]
    theta[:, 1, 1] = s[:, 1]
    return _affine(x, theta)


def _rotate(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # Rotation in normalised coordinates, as in the reference (a true rotation for square images).
    c, s = torch.cos(a), torch.sin(a)
    z = torch.zeros_like(a)
    theta = torch.stack([torch.stack([c, s, z], 1), torch.stack([-s, c, z], 1)], 1)
    return _affine(x, theta)


def _flip(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return torch.where(f.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _color(x: torch.Tensor, p: DSAParams) -> torch.Tensor:
    """Brightness, then saturation, then contrast, fused into one affine map per pixel.

    With b the shift, s the saturation and k the contrast factor, the three reference steps
    x1 = x + b; x2 = (x1 - mean_c x1)·s + mean_c x1; x3 = (x2 - mean_chw x2)·k + mean_chw x2
    collapse exactly to k·s·x + k·(1 - s)·mean_c x + (1 - k)·mean_chw x + b (mean_c of
    x - mean_c x is zero), i.e. four passes over the batch instead of ten.
    """
    assert p.brightness is not None and p.saturation is not None and p.contrast is not None
    b, s, k = _col(p.brightness, x), _col(p.saturation, x), _col(p.contrast, x)
    m_pix = x.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    m_img = m_pix.mean(dim=(2, 3), keepdim=True)  # (N, 1, 1, 1) == mean over C, H, W
    out = x * (k * s)
    out = torch.addcmul(out, m_pix, k * (1.0 - s))
    return out + (m_img * (1.0 - k) + b)


def _crop(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Integer translation via one batched gather; pixels shifted in from outside are 0.

    out[y, x] = in[y + dy, x + dx], so a positive dy zeroes the bottom dy rows. A flat
    gather (backward: scatter_add) is several times faster than advanced indexing here.
    """
    n, c, h, w = x.shape
    shift = shift.to(x.device)
    r = shift.shape[0]  # 1 when siamese: the same index grid for every sample
    iy = torch.arange(h, device=x.device).unsqueeze(0) + shift[:, :1]  # (r, H)
    ix = torch.arange(w, device=x.device).unsqueeze(0) + shift[:, 1:]  # (r, W)
    valid = ((iy >= 0) & (iy < h)).unsqueeze(2) & ((ix >= 0) & (ix < w)).unsqueeze(1)
    flat = iy.clamp(0, h - 1).unsqueeze(2) * w + ix.clamp(0, w - 1).unsqueeze(1)  # (r, H, W)
    idx = flat.view(r, 1, h * w).expand(n, c, h * w)
    out = torch.gather(x.reshape(n, c, h * w), 2, idx).view(n, c, h, w)
    return out * valid.unsqueeze(1).to(x.dtype)


def _cutout(x: torch.Tensor, corner: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero one box per sample (clipped at borders) with a batched multiplicative mask."""
    _, _, h, w = x.shape
    corner = corner.to(x.device)
    ys = torch.arange(h, device=x.device).unsqueeze(0)
    xs = torch.arange(w, device=x.device).unsqueeze(0)
    in_y = (ys >= corner[:, :1]) & (ys < corner[:, :1] + size[0])  # (r, H)
    in_x = (xs >= corner[:, 1:]) & (xs < corner[:, 1:] + size[1])  # (r, W)
    keep = ~(in_y.unsqueeze(2) & in_x.unsqueeze(1))
    return x * keep.unsqueeze(1).to(x.dtype)


def apply_dsa(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply a parameter draw to ``x`` (N, C, H, W); differentiable w.r.t. ``x``.

    Siamese params broadcast to any batch size; otherwise ``params.n`` must equal ``N``.
    """
    if x.dim() != 4:
        raise ValueError(f"apply_dsa expects (N, C, H, W), got shape {tuple(x.shape)}")
    if not params.siamese and params.n != x.shape[0]:
        raise ValueError(
            f"non-siamese DSA params were drawn for n={params.n} but the batch has "
            f"{x.shape[0]} samples; draw params for this batch or use siamese=True"
        )
    if (params.height, params.width) != tuple(x.shape[2:]):
        raise ValueError(
            f"DSA params were drawn for {params.height}x{params.width} images but the batch "
            f"is {x.shape[2]}x{x.shape[3]}"
        )
    if x.shape[0] == 0:
        return x
    for fam in params.families:
        if fam == "scale":
            assert params.scale is not None
            x = _scale(x, params.scale)
        elif fam == "rotate":
            assert params.rotate is not None
            x = _rotate(x, params.rotate)
        elif fam == "flip":
            assert params.flip is not None
            x = _flip(x, params.flip)
        elif fam == "color":
            x = _color(x, params)
        elif fam == "crop":
            assert params.crop is not None
            x = _crop(x, params.crop)
        elif fam == "cutout":
            assert params.cutout is not None
            x = _cutout(x, params.cutout, params.cutout_size)
    return x


def dsa(
    x: torch.Tensor,
    config: DSAConfig,
    *,
    generator: torch.Generator,
    siamese: bool = False,
) -> torch.Tensor:
    """Sample parameters for ``x`` and apply them (per-sample unless ``siamese``)."""
    params = sample_dsa_params(
        config, x.shape[0], generator=generator, siamese=siamese,
        height=x.shape[2], width=x.shape[3],
    )
    return apply_dsa(x, params)


def siamese_dsa(
    *batches: torch.Tensor, config: DSAConfig, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Apply ONE shared draw to every batch (e.g. real and synthetic), whatever their sizes."""
    if not batches:
        return ()
    h, w = batches[0].shape[2], batches[0].shape[3]
    params = sample_dsa_params(config, 1, generator=generator, siamese=True, height=h, width=w)
    return tuple(apply_dsa(b, params) for b in batches)


@dataclass(frozen=True)
class CutMix:
    """One CutMix draw for a batch (Yun et al., ICCV 2019): paste the box ``rows × cols`` of
    sample ``perm[i]`` into sample ``i``. ``ratio`` is the area left to each sample's own image,
    the weight of its own label's loss (the pasted image's label gets ``1 - ratio``)."""

    perm: torch.Tensor  # (N,) int64
    rows: tuple[int, int]  # [top, bottom)
    cols: tuple[int, int]  # [left, right)
    ratio: float


def sample_cutmix(n: int, height: int, width: int, *, beta: float,
                  generator: torch.Generator) -> CutMix:
    """A box of area ``(1 - λ)`` of the image, λ ~ Beta(β, β), centred uniformly and clipped to
    the image (so the kept area, ``ratio``, is measured after clipping)."""
    if beta <= 0:
        raise ValueError(f"cutmix beta must be positive, got {beta}")
    # one draw from the explicit generator seeds everything else, so a run stays reproducible
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator,
                                                        device=generator.device)))
    lam = float(rng.beta(beta, beta))
    side = math.sqrt(1.0 - lam)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    dy, dx = int(height * side) // 2, int(width * side) // 2
    rows = (max(cy - dy, 0), min(cy + dy, height))
    cols = (max(cx - dx, 0), min(cx + dx, width))
    area = (rows[1] - rows[0]) * (cols[1] - cols[0])
    perm = torch.from_numpy(rng.permutation(n))
    return CutMix(perm=perm, rows=rows, cols=cols, ratio=1.0 - area / (height * width))


def apply_cutmix(x: torch.Tensor, mix: CutMix) -> torch.Tensor:
    """``x`` with ``mix``'s box taken from the permuted batch (a new tensor; ``x`` is kept)."""
    out = x.clone()
    (r0, r1), (c0, c1) = mix.rows, mix.cols
    out[:, :, r0:r1, c0:c1] = x[mix.perm.to(x.device), :, r0:r1, c0:c1]
    return out
