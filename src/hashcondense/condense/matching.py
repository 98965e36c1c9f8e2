"""Distribution matching in the feature-embedding space (DM, Zhao & Bilen 2023; IEM Eq. 7) and
the loop that DM and IEM share.

All classes of a rank go through one forward pass: instance norm has no cross-sample
statistics, so a batch holding several classes gives each image the features it would get
alone. The siamese DSA draw is per class (one draw per class shared by its real and synthetic
images), expanded to per-sample parameters with ``DSAParams.take``.

Random streams (``streams.py``): the network of iteration t and its weight perturbation come
from (seed, t) (with ``trained_networks``: the queue member drawn from (seed, t), trained
between updates from the (seed, t, step) streams, its weights carried in checkpoints; see
``networks.py``); the augmentation family of mode "S" (mode "C": its one drawn family) from
(seed, t) as well (one family per iteration for all classes; the DM reference draws one per
class); each class's initial images from (seed, class) and its real batch (drawn without
replacement) and DSA parameters from (seed, class, t). A rank that owns any subset of the
classes therefore computes what one process computes for them. Version 2 of the loop
(``ALGORITHM_VERSION``); version 1 drew everything from one generator in class order, so its
numbers differ.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from ..augment import DSAConfig, apply_dsa, composed_families, concat_params, sample_dsa_params
from ..data import LabeledImages
from ..models import build_backbone
from ..normalization import Normalization
from ..runtime import (
    CompiledModule,
    autocast,
    chunked_forward,
    default_chunk,
    resolve_compile,
    resolve_device,
    resolve_precision,
)
from ..settings import COMPILES
from ..synthetic import SyntheticSet, decoded_labels, multi_formation_decode, multi_formation_init
from .base import Budget, SnapshotCallback, check_ipc
from .driver import Execution, Resumable, drive
from .networks import NetworkQueue, NetworkTrainer, TrainedNetworks
from .streams import STREAMS_VERSION, stream

log = logging.getLogger(__name__)

ALGORITHM_VERSION = 2  # part of DM/IEM's identity in result caches (see the docstring)


def class_means(features: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature per class: features (N, D), groups (N,) in [0, C) → (C, D)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype,
                       device=features.device).index_add_(0, groups, features)
    counts = torch.bincount(groups, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def class_matching_losses(real_means: torch.Tensor, syn_means: torch.Tensor) -> torch.Tensor:
    """‖mean f(real_c) − mean f(syn_c)‖² per class, (C,): the terms of Eq. 7, kept apart so
    that ranks owning different classes can add them up in class order."""
    return ((real_means.detach().float() - syn_means.float()) ** 2).sum(1)


def class_covariance_losses(real: torch.Tensor, real_groups: torch.Tensor, syn: torch.Tensor,
                            syn_groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """‖Σ(f(real_c)) − Σ(f(syn_c))‖²_F per class, (C,): the second-order term of IID (Deng et
    al. 2024), with biased covariances. Computed from Gram matrices, ‖XᵀX/n − YᵀY/m‖² =
    ‖XXᵀ‖²/n² − 2‖XYᵀ‖²/nm + ‖YYᵀ‖²/m², so a 2,048-dim embedding never builds a D×D matrix;
    the real side carries no gradient."""
    real = real.detach().float()
    losses = []
    for c in range(num_classes):
        x = real[real_groups == c]
        y = syn[syn_groups == c].float()
        x, y = x - x.mean(0), y - y.mean(0)
        n, m = len(x), len(y)
        losses.append((x @ x.T).square().sum() / n**2 - 2 * (x @ y.T).square().sum() / (n * m)
                      + (y @ y.T).square().sum() / m**2)
    return torch.stack(losses)


def class_mmd_losses(real: torch.Tensor, real_groups: torch.Tensor, syn: torch.Tensor,
                     syn_groups: torch.Tensor, num_classes: int,
                     scales: tuple[float, ...]) -> torch.Tensor:
    """MMD² per class, (C,), under a sum of Gaussian kernels exp(−‖a − b‖² / (s·m)), one per
    scale s, where m is the median squared distance over the class's pairs of real embeddings
    (1 with a single real image). M3D (Zhang et al. 2024): it matches every moment where Eq.
    7's linear kernel matches the mean. The biased (V-statistic) estimate, so it is ≥ 0 and 0
    for equal sets; the real side and the bandwidth carry no gradient."""
    real = real.detach().float()
    losses = []
    for c in range(num_classes):
        x = real[real_groups == c]
        y = syn[syn_groups == c].float()
        xx, xy, yy = (torch.cdist(a, b).square() for a, b in ((x, x), (x, y), (y, y)))
        pairs = torch.pdist(x).square()
        median = torch.quantile(pairs, 0.5) if pairs.numel() else xx.new_tensor(1.0)
        widths = [s * median.clamp_min(1e-12) for s in scales]
        k = [sum(torch.exp(-d / w) for w in widths).mean() for d in (xx, xy, yy)]
        losses.append(k[0] - 2 * k[1] + k[2])
    return torch.stack(losses)


def spatial_attention(maps: torch.Tensor, power: float) -> torch.Tensor:
    """DataDAM's spatial attention of activation maps (N, C, H, W): Σ_c |a_c|^p over channels,
    flattened to (N, H·W) and L2-normalised per image, in fp32."""
    attention = maps.float().abs().pow(power).sum(1).flatten(1)
    return nn.functional.normalize(attention, dim=1)


class AttentionEmbedding(nn.Module):
    """A backbone's embedding with the spatial attention of its intermediate maps appended as
    columns, (N, D + Σ H·W): one tensor, so the chunked, compiled forward and ``class_means``
    serve both, and the class means of the extra columns are DataDAM's attention means. Shares
    the backbone's parameters (re-initialisation and perturbation act on both)."""

    def __init__(self, backbone: nn.Module, power: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.power = power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, maps = self.backbone.embed_with_maps(x)
        return torch.cat([features.float(), *(spatial_attention(m, self.power) for m in maps)],
                         dim=1)


def distribution_matching_loss(real_means: torch.Tensor, syn_means: torch.Tensor) -> torch.Tensor:
    """Σ_c ‖mean f(real_c) − mean f(syn_c)‖² (IEM Eq. 7): the linear-kernel MMD summed over
    classes. real_means, syn_means: (C, D); the real side carries no gradient."""
    return class_matching_losses(real_means, syn_means).sum()


@dataclass(frozen=True)
class MatchingConfig:
    """Hyperparameters of the shared DM/IEM loop (defaults: DM's reference values)."""

    lr: float = 1.0
    momentum: float = 0.5
    batch_real: int = 256
    factor: int = 1
    dsa: DSAConfig | None = field(default_factory=DSAConfig)
    backbone: str = "auto"  # ConvNet-3 up to 32 px, ResNetAP-10 above
    precision: str = "auto"
    device: str = "auto"
    compile: str = "off"  # "auto" pays off beyond ~20 iterations (two ~20 s compiles)
    real_chunk: int | None = None  # real images per forward; None: per device; 0: one batch
    # classes per forward/backward pass (the synthetic side keeps its graph, so this bounds
    # memory; results do not change); None: as many as keep a pass to SYN_PIXELS_PER_PASS
    class_batch: int | None = None
    # None: a freshly initialised network every update (DM, IEM); else IDC's schedule of
    # networks trained on real images between updates (networks.py)
    trained_networks: TrainedNetworks | None = None
    # IID's second-order term: + weight · Σ_c ‖Σ_real_c − Σ_syn_c‖²_F (0: DM's loss as published)
    covariance_weight: float = 0.0
    # DataDAM's term: + weight · Σ_c Σ_layers ‖mean att(real_c) − mean att(syn_c)‖², where att is
    # the L2-normalised Σ_ch |map|^power of every intermediate block (DataDAM weighs it 100× its
    # embedding term, with power 1)
    attention_weight: float = 0.0
    attention_power: float = 1.0
    # M3D's term: + weight · Σ_c MMD²_c under Gaussian kernels of these bandwidths (multiples of
    # the class's median squared distance between real embeddings); 0: off
    mmd_weight: float = 0.0
    mmd_scales: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {COMPILES}, got {self.compile!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {self.batch_real}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.real_chunk is not None and self.real_chunk < 0:
            raise ValueError(f"real_chunk must be >= 0 or None, got {self.real_chunk}")
        if not 0 <= self.covariance_weight < float("inf"):
            raise ValueError(f"covariance_weight must be finite and >= 0, got "
                             f"{self.covariance_weight}")
        if not 0 <= self.attention_weight < float("inf"):
            raise ValueError(f"attention_weight must be finite and >= 0, got "
                             f"{self.attention_weight}")
        if not 0 <= self.mmd_weight < float("inf"):
            raise ValueError(f"mmd_weight must be finite and >= 0, got {self.mmd_weight}")
        if not self.mmd_scales or not all(0 < s < float("inf") for s in self.mmd_scales):
            raise ValueError(f"mmd_scales must be positive and finite, got {self.mmd_scales}")
        if not 0 < self.attention_power < float("inf"):
            raise ValueError(f"attention_power must be finite and > 0, got "
                             f"{self.attention_power}")
        if self.class_batch is not None and self.class_batch < 1:
            raise ValueError(f"class_batch must be >= 1 or None, got {self.class_batch}")


SYN_PIXELS_PER_PASS = 512 * 32 * 32  # decoded synthetic pixels per pass (CIFAR ipc ≤ 10: all)


def classes_per_pass(config: MatchingConfig, ipc: int, resolution: int) -> int:
    """How many classes share one forward/backward pass: ``config.class_batch``, else as many
    as keep the decoded synthetic images of a pass within ``SYN_PIXELS_PER_PASS`` (one class
    at least). At ImageNet resolutions a pass holding 125 classes' graphs would need
    hundreds of GB; one class at a time needs a few."""
    if config.class_batch is not None:
        return config.class_batch
    per_class = ipc * config.factor**2 * resolution**2
    return max(1, SYN_PIXELS_PER_PASS // per_class)


NetworkHook = Callable[[nn.Module, torch.Generator], None]


def fresh_network(backbone: str, *, in_channels: int, resolution: int, seed: int) -> nn.Module:
    """A randomly initialised backbone from ``seed``, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(backbone, in_channels=in_channels, resolution=resolution)


@torch.no_grad()
def reinitialise(net: nn.Module, backbone: str, *, in_channels: int, resolution: int,
                 seed: int) -> nn.Module:
    """Give ``net`` the weights ``fresh_network(seed)`` would have, in place, so one (compiled)
    module object serves every iteration's freshly initialised network."""
    fresh = fresh_network(backbone, in_channels=in_channels, resolution=resolution, seed=seed)
    for target, value in zip(net.parameters(), fresh.parameters(), strict=True):
        target.copy_(value)
    return net


def initial_synthetic(train: LabeledImages, ipc: int, factor: int, normalization: Normalization,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-image initialisation: per class ipc·f² random real images, f² per stored image."""
    check_ipc(train, ipc * factor * factor)
    images, labels = [], []
    for c in range(len(train.classes)):
        members = torch.nonzero(train.labels == c).flatten()
        pick = members[torch.randperm(len(members), generator=generator)[: ipc * factor**2]]
        real = normalization.normalize(train.images[pick])
        images.append(real if factor == 1 else
                      multi_formation_init(real, factor, train.resolution))
        labels.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def initial_class_images(train: LabeledImages, c: int, ipc: int, factor: int,
                         normalization: Normalization, seed: int) -> torch.Tensor:
    """Class ``c``'s initial stored images: ipc·f² of its real images from the (seed, class)
    stream, f² per stored image; the same whichever rank initialises the class."""
    members = torch.nonzero(train.labels == c).flatten()
    generator = stream(seed, "init", c)
    pick = members[torch.randperm(len(members), generator=generator)[: ipc * factor**2]]
    real = normalization.normalize(train.images[pick])
    return real if factor == 1 else multi_formation_init(real, factor, train.resolution)


def iteration_dsa(config: DSAConfig, generator: torch.Generator) -> DSAConfig:
    """The families applied at one iteration: in mode "S" one family, drawn from the
    iteration's shared stream, for every class (each class then draws its own parameters);
    in mode "C" likewise the one family drawn to go after flip and colour, before cutout."""
    families = config.families
    if config.mode == "C":
        return replace(config, strategy="_".join(composed_families(families, generator)),
                       mode="M")
    if config.mode != "S" or len(families) <= 1:
        return config
    pick = int(torch.randint(len(families), (1,), generator=generator).item())
    return replace(config, strategy=families[pick], mode="M")


def match_distributions(
    train: LabeledImages,
    ipc: int,
    *,
    method: str,
    config: MatchingConfig,
    normalization: Normalization,
    seed: int,
    budget: Budget,
    network_hook: NetworkHook | None = None,
    metadata: dict | None = None,
    on_snapshot: SnapshotCallback | None = None,
    progress: bool = True,
    execution: Execution | None = None,
) -> SyntheticSet:
    """Optimise ipc synthetic images per class so that their mean embedding under freshly
    initialised (optionally perturbed) networks matches the real images' (DM / IEM Alg. 1).

    The loss is a sum over classes, so each rank of ``execution.world`` holds, initialises
    and optimises only its classes (and only their real images); the network of an iteration
    comes from (seed, iteration), every class's draws from (seed, class, iteration), so the
    result does not depend on how many ranks share the work."""
    execution = execution or Execution()
    world = execution.world
    device = resolve_device(config.device)
    amp = resolve_precision(config.precision, device)
    num_classes, f, res = len(train.classes), config.factor, train.resolution
    check_ipc(train, ipc * f * f)
    if config.covariance_weight and ipc * f * f < 2:
        raise ValueError(f"{method}: covariance_weight needs at least 2 synthetic images per "
                         f"class (ipc × factor² = {ipc * f * f}): one image has no covariance")
    owned = world.owned_classes(num_classes)
    if config.trained_networks is not None and world.size > 1:
        raise ValueError(f"{method}: trained_networks does not support world size > 1 yet "
                         "(each rank holds only its classes' real images)")
    # -- init: this rank's classes only ---------------------------------------------------
    members = [torch.nonzero(train.labels == c).flatten() for c in owned]
    own_images = train.images[torch.cat(members)].to(device)  # uint8; normalised per batch
    offsets = [0, *itertools.accumulate(len(m) for m in members)]
    local = [torch.arange(offsets[j], offsets[j + 1]) for j in range(len(owned))]
    stored = torch.cat([initial_class_images(train, c, ipc, f, normalization, seed)
                        for c in owned]).to(device).requires_grad_(True)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    optimizer = torch.optim.SGD([stored], lr=config.lr, momentum=config.momentum)
    net = fresh_network(config.backbone, in_channels=train.channels, resolution=res,
                        seed=seed).to(device).requires_grad_(False)
    dim = net.feature_dim  # the embedding's columns; attention columns follow with its term
    embed = CompiledModule(AttentionEmbedding(net, config.attention_power)
                           if config.attention_weight else net,
                           resolve_compile(config.compile, device))

    def initialise(target: nn.Module, joined: int) -> None:
        """The fresh network of update ``joined`` (a trained network's start, too)."""
        reinitialise(target, config.backbone, in_channels=train.channels, resolution=res,
                     seed=seed * 1_000_003 + joined)

    networks: NetworkQueue | None = None
    if config.trained_networks is not None:
        own_labels = torch.cat([torch.full((len(m),), c, dtype=torch.long)
                                for c, m in zip(owned, members, strict=True)]).to(device)
        schedule = config.trained_networks

        def make_trainer() -> NetworkTrainer:
            return NetworkTrainer(schedule, fresh_network(
                config.backbone, in_channels=train.channels, resolution=res,
                seed=seed).to(device), own_images, own_labels, normalization, num_classes)

        networks = NetworkQueue(schedule, make_trainer, initialise)
    real_chunk = default_chunk(device) if config.real_chunk is None else config.real_chunk or None
    rows = slice(owned.start * ipc, owned.stop * ipc)
    width = classes_per_pass(config, ipc, res)
    passes = [range(j, min(j + width, len(owned))) for j in range(0, len(owned), width)]

    def match_pass(group: range, draws: list[torch.Generator],
                   families: DSAConfig | None) -> torch.Tensor:
        """Forward and backward of the classes ``group`` (local indices); their losses."""
        real_idx = torch.cat([local[j][torch.randperm(len(local[j]), generator=g)
                                       [:config.batch_real]] for j, g in zip(group, draws,
                                                                             strict=True)])
        real_groups = torch.arange(len(group)).repeat_interleave(torch.tensor(
            [min(len(local[j]), config.batch_real) for j in group])).to(device)
        syn_groups = decoded_labels(torch.arange(len(group)).repeat_interleave(ipc),
                                    f).to(device)
        x_real = normalization.normalize(own_images[real_idx.to(device)])
        x_syn = multi_formation_decode(stored[group.start * ipc:group.stop * ipc], f, res)
        if families is not None:
            params = concat_params([
                sample_dsa_params(families, 1, generator=g, siamese=False, height=res,
                                  width=res) for g in draws]).to(device)
            x_real = apply_dsa(x_real, params.take(real_groups))
            x_syn = apply_dsa(x_syn, params.take(syn_groups))
        with torch.no_grad(), autocast(device, amp):
            real_features = chunked_forward(embed, x_real, real_chunk, pad=embed.compiled)
            real_means = class_means(real_features.float(), real_groups, len(group))
        with autocast(device, amp):
            syn_features = embed(x_syn).float()
        syn_means = class_means(syn_features, syn_groups, len(group))
        per_class = class_matching_losses(real_means[:, :dim], syn_means[:, :dim])
        if config.attention_weight:
            per_class = per_class + config.attention_weight * class_matching_losses(
                real_means[:, dim:], syn_means[:, dim:])
        if config.covariance_weight:
            per_class = per_class + config.covariance_weight * class_covariance_losses(
                real_features[:, :dim], real_groups, syn_features[:, :dim], syn_groups,
                len(group))
        if config.mmd_weight:
            per_class = per_class + config.mmd_weight * class_mmd_losses(
                real_features[:, :dim], real_groups, syn_features[:, :dim], syn_groups,
                len(group), tuple(config.mmd_scales))
        per_class.sum().backward()  # a class's gradient comes from its own term only
        return per_class.detach()

    # -- one iteration ----------------------------------------------------------------------
    def step(it: int, out_of_time: Callable[[], bool]) -> tuple[float, int, bool]:
        if networks is None:
            initialise(net, it)
        else:
            networks.prepare(net, it, seed)
        if network_hook is not None:
            network_hook(net, stream(seed, "network", it))
        families = None if config.dsa is None else iteration_dsa(config.dsa,
                                                                 stream(seed, "dsa", it))
        optimizer.zero_grad(set_to_none=True)
        losses = [match_pass(group, [stream(seed, "class", owned[j], it) for j in group],
                             families) for group in passes]
        optimizer.step()
        if networks is not None:
            networks.train(it, seed, amp)  # before the next update
        # the reported loss is summed in class order over all ranks: the same on any world
        return world.gather_classes(torch.cat(losses), num_classes).sum().item(), 1, True

    # -- what a snapshot / checkpoint holds ---------------------------------------------------
    def snapshot(iterations: int, steps: int, seconds: float) -> SyntheticSet:
        return SyntheticSet(
            images=world.gather_classes(stored.detach(), num_classes).cpu().clone(),
            labels=labels.clone(), classes=train.classes,
            normalization=normalization, factor=f, resolution=res,
            metadata={**(metadata or {}), "method": method, "ipc": ipc, "seed": seed,
                      "iterations": iterations, "steps": steps, "seconds": seconds,
                      "lr": config.lr, "momentum": config.momentum,
                      "batch_real": config.batch_real,
                      "backbone": config.backbone, "precision": str(amp or "fp32"),
                      "compiled": embed.compiled,
                      "dsa": config.dsa.strategy if config.dsa else "none",
                      "classes_per_pass": min(width, num_classes),
                      "covariance_weight": config.covariance_weight,
                      "attention_weight": config.attention_weight,
                      "attention_power": config.attention_power,
                      **({"mmd_weight": config.mmd_weight,
                          "mmd_scales": list(config.mmd_scales)} if config.mmd_weight else {}),
                      "trained_networks": (None if config.trained_networks is None
                                           else asdict(config.trained_networks)),
                      "algorithm_version": ALGORITHM_VERSION,
                      "streams_version": STREAMS_VERSION},
        )

    def save_state() -> dict[str, torch.Tensor]:
        buffer = optimizer.state.get(stored, {}).get("momentum_buffer")
        state = {} if buffer is None else {
            "momentum_buffer": world.gather_classes(buffer, num_classes)}
        return state if networks is None else {**state, **networks.state()}

    def restore(images: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        expected = (num_classes * ipc, *stored.shape[1:])
        if tuple(images.shape) != expected:
            raise ValueError(f"checkpoint images have shape {tuple(images.shape)}, this run "
                             f"needs {expected}")
        with torch.no_grad():
            stored.copy_(images[rows].to(device))
        if "momentum_buffer" in state:
            optimizer.state[stored]["momentum_buffer"] = \
                state["momentum_buffer"][rows].to(device).clone()
        if networks is not None:
            networks.load_state(state)

    return drive(budget, step, snapshot=snapshot, desc=f"condense {method} ipc={ipc}",
                 execution=execution, resumable=Resumable(save_state, restore),
                 on_snapshot=on_snapshot, progress=progress)
