"""Experiment plumbing: YAML grids, a resumable runner over content-hashed cells, an
append-only atomically written store, and the report."""

from .grid import Experiment, builtin_experiments, load_experiment, parse_experiment
from .runner import Cell, plan, run_experiment
from .store import ResultStore, config_hash

__all__ = [
    "Cell", "Experiment", "ResultStore", "builtin_experiments", "config_hash", "load_experiment",
    "parse_experiment", "plan", "run_experiment",
]
