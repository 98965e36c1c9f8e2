"""Condensers behind one interface: real train split + ipc → SyntheticSet."""

from . import dm, dsa, herding, idc, iem, random  # noqa: F401  (register the methods)
from .base import (
    CONDENSERS,
    Budget,
    Condenser,
    IterativeCondenser,
    Runtime,
    build_condenser,
    check_ipc,
    with_runtime,
)
from .driver import Checkpointing, Execution

__all__ = [
    "CONDENSERS", "Budget", "Checkpointing", "Condenser", "Execution", "IterativeCondenser",
    "Runtime", "build_condenser", "check_ipc", "with_runtime",
]
