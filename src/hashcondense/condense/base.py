"""The ``Condenser`` interface: a real training split + ipc → a ``SyntheticSet``.

Budgets are iterations and/or wall-clock seconds, so methods can be compared at equal cost;
``on_snapshot`` receives intermediate synthetic sets at chosen iterations (paper Fig. 3).

A condenser declares what it offers instead of being probed for it (one file per method,
registered in :data:`CONDENSERS`, which refuses a class that misses a declaration):

- ``name``: its registry name;
- ``algorithm_version`` (class-level): part of the identity of every set it makes (the
  experiment runner's cache and result keys hash the method, this version, the options the grid
  gave and the precision — never the dataclass's repr, so a new field with a default re-keys
  nothing). **A change to a condenser's defaults or loop that changes its numbers must bump its
  ``algorithm_version``**; a change that keeps them (a faster path, a memory bound) must not;
- ``iterative`` (class-level): it takes a :class:`Budget` (iterations and/or seconds) and
  delivers snapshots; iterative condensers have ``iterations``, their reference budget;
- ``with_runtime(runtime)``: the condenser with a :class:`Runtime` (compile, precision) applied
  to every network it runs; condensers that run none return themselves.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from ..data import LabeledImages
from ..normalization import Normalization
from ..registry import Registry
from ..settings import COMPILES, PRECISIONS
from ..synthetic import SyntheticSet

if TYPE_CHECKING:
    from .driver import Execution

SnapshotCallback = Callable[[int, float, SyntheticSet], None]  # (iteration, seconds, set)
C = TypeVar("C")


@dataclass(frozen=True)
class Budget:
    """Stop after ``iterations`` or ``seconds``, whichever comes first (None = unlimited)."""

    iterations: int | None = None
    seconds: float | None = None
    snapshots: tuple[int, ...] = ()  # iterations whose set goes to ``on_snapshot`` (sorted)

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 0:
            raise ValueError(f"budget iterations must be >= 0, got {self.iterations}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"budget seconds must be positive, got {self.seconds}")
        snapshots = tuple(self.snapshots)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in snapshots):
            raise ValueError(f"budget snapshots must be iterations >= 0, got {list(snapshots)}")
        if len(set(snapshots)) != len(snapshots):
            raise ValueError(f"budget snapshots repeat an iteration: {list(snapshots)}")
        object.__setattr__(self, "snapshots", tuple(sorted(snapshots)))

    def exhausted(self, iteration: int, seconds: float) -> bool:
        return (self.iterations is not None and iteration >= self.iterations) or (
            self.seconds is not None and seconds >= self.seconds
        )


@dataclass(frozen=True)
class Runtime:
    """How a condenser's networks run: ``compile`` (never changes what is computed in
    principle, so it is no part of a set's identity) and ``precision`` (changes the numbers:
    part of it). None leaves the condenser's own setting."""

    compile: str | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {list(COMPILES)}, got {self.compile!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got "
                             f"{self.precision!r}")

    def apply(self, config: C) -> C:
        """``config`` (a dataclass with ``compile`` and ``precision`` fields: a matching loop's
        config, a ``TrainConfig``) with the settings this runtime gives."""
        changes = {k: v for k, v in (("compile", self.compile), ("precision", self.precision))
                   if v is not None}
        return dataclasses.replace(config, **changes) if changes else config



class Condenser(Protocol):
    """See the module docstring for what each declaration means."""

    name: str
    algorithm_version: ClassVar[int]
    iterative: ClassVar[bool]

    def with_runtime(self, runtime: Runtime) -> Condenser: ...

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


class IterativeCondenser(Condenser, Protocol):
    """A condenser with ``iterative = True``: it runs ``iterations`` (its reference budget)
    unless given a :class:`Budget`."""

    iterations: int


DECLARATIONS = ("name", "algorithm_version", "iterative", "with_runtime", "condense")


class CondenserRegistry(Registry[Condenser]):
    """The registry of condensers; a class missing a declaration fails at its registration."""

    def register(self, name: str) -> Callable[[Callable[..., Condenser]],
                                              Callable[..., Condenser]]:
        add = super().register(name)

        def decorator(factory: Callable[..., Condenser]) -> Callable[..., Condenser]:
            missing = [d for d in DECLARATIONS if not hasattr(factory, d)]
            if getattr(factory, "iterative", False) and not hasattr(factory, "iterations"):
                missing.append("iterations")
            if missing:
                raise TypeError(f"condenser {name!r} does not declare {', '.join(missing)}")
            return add(factory)

        return decorator


CONDENSERS: CondenserRegistry = CondenserRegistry("condenser")


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
    """Options with every mapping merged (recursively) into the dataclass default it replaces
    (or, for a config that is off by default, into that config's own defaults)."""
    merged = {}
    for key, value in options.items():
        default = getattr(defaults, key, None)
        if isinstance(value, Mapping) and default is None:
            default = _optional_config(defaults, key)  # a config that is off by default
        if (dataclasses.is_dataclass(default) and value is not None
                and not isinstance(value, Mapping)
                and not isinstance(value, type(default))):
            raise ValueError(f"condenser option {where}.{key} is a nested config; give it a "
                             f"mapping of its fields, not {value!r}")
        if isinstance(value, Mapping):
            if not dataclasses.is_dataclass(default):
                raise ValueError(f"condenser option {where}.{key} is not a nested config; "
                                 f"give it a value, not a mapping")
            value = dataclasses.replace(default, **_merge_options(default, value,
                                                                  f"{where}.{key}"))
        merged[key] = value
    return merged


def with_runtime(condenser: Condenser, **settings: Any) -> Condenser:
    """``condenser.with_runtime(Runtime(**settings))`` (``compile=``, ``precision=``)."""
    return condenser.with_runtime(Runtime(**settings))


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


def _optional_config(defaults: object, key: str) -> object:
    """The defaults of a nested config that is None (off) by default, from the field's type
    (``X | None`` with X a dataclass), so a mapping in a grid switches it on; else None."""
    hint = typing.get_type_hints(type(defaults)).get(key)
    configs = [t for t in typing.get_args(hint) if dataclasses.is_dataclass(t)]
    return configs[0]() if len(configs) == 1 else None
