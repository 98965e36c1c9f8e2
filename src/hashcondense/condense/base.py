"""The ``Condenser`` interface: a real training split + ipc → a ``SyntheticSet``.

Budgets are iterations and/or wall-clock seconds, so methods can be compared at equal cost;
``on_snapshot`` receives intermediate synthetic sets at chosen iterations (paper Fig. 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..data import LabeledImages
from ..normalization import Normalization
from ..registry import Registry
from ..synthetic import SyntheticSet

if TYPE_CHECKING:
    from .driver import Execution

SnapshotCallback = Callable[[int, float, SyntheticSet], None]  # (iteration, seconds, set)


@dataclass(frozen=True)
class Budget:
    """Stop after ``iterations`` or ``seconds``, whichever comes first (None = unlimited)."""

    iterations: int | None = None
    seconds: float | None = None
    snapshots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"budget iterations must be >= 0, got {self.iterations}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"budget seconds must be positive, got {self.seconds}")

    def exhausted(self, iteration: int, seconds: float) -> bool:
        return (self.iterations is not None and iteration >= self.iterations) or (
            self.seconds is not None and seconds >= self.seconds
        )


class Condenser(Protocol):
    name: str

    def condense(
        self,
        train: LabeledImages,
        ipc: int,
        *,
        normalization: Normalization,
        seed: int,
        budget: Budget | None = None,
        on_snapshot: SnapshotCallback | None = None,
        progress: bool = True,
        execution: Execution | None = None,  # ranks and checkpoints; never changes the result
    ) -> SyntheticSet: ...


CONDENSERS: Registry[Condenser] = Registry("condenser")


def build_condenser(name: str, **kwargs: object) -> Condenser:
    """The registered condenser ``name`` with ``kwargs``; a mapping given for a nested config
    (``matching={"inner_loop": 2}``) updates that config's defaults, so YAML grids and the CLI
    can reach every hyperparameter without building dataclasses."""
    factory = CONDENSERS.get(name)
    try:
        if dataclasses.is_dataclass(factory):
            kwargs = _merge_options(factory(), kwargs, name)
        return factory(**kwargs)
    except TypeError as e:  # an option this method does not have
        raise ValueError(f"condenser {name!r}: {e}") from None


def _merge_options(defaults: object, options: Mapping[str, object], where: str) -> dict:
    """Options with every mapping merged (recursively) into the dataclass default it replaces."""
    merged = {}
    for key, value in options.items():
        default = getattr(defaults, key, None)
        if isinstance(value, Mapping):
            if not dataclasses.is_dataclass(default):
                raise ValueError(f"condenser option {where}.{key} is not a nested config; "
                                 f"give it a value, not a mapping")
            value = dataclasses.replace(default, **_merge_options(default, value,
                                                                  f"{where}.{key}"))
        merged[key] = value
    return merged


def with_runtime(condenser: Condenser, **settings: str) -> Condenser:
    """``condenser`` with every nested runtime config (matching loop, feature training) given
    ``settings`` (``compile=``, ``precision=``) where it has that field; condensers that run no
    network come back unchanged."""
    if not dataclasses.is_dataclass(condenser):
        return condenser
    changes = {}
    for f in dataclasses.fields(condenser):
        value = getattr(condenser, f.name)
        if dataclasses.is_dataclass(value):
            own = {k: v for k, v in settings.items() if hasattr(value, k)}
            if own:
                changes[f.name] = dataclasses.replace(value, **own)
    return dataclasses.replace(condenser, **changes) if changes else condenser


def check_ipc(train: LabeledImages, ipc: int) -> None:
    """Refuse an ipc that no class can supply, before any work is done."""
    if ipc < 1:
        raise ValueError(f"ipc must be >= 1, got {ipc}")
    counts = train.class_counts()
    smallest = min(counts)
    if ipc > smallest:
        c = counts.index(smallest)
        raise ValueError(
            f"ipc={ipc} exceeds the {smallest} training images of class {train.classes[c]!r}"
        )
