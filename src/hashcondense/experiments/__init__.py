"""Experiment plumbing: content-hashed cells and an append-only, atomically written store."""

from .store import ResultStore, config_hash

__all__ = ["ResultStore", "config_hash"]
