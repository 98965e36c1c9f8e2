"""Hashing methods behind one interface (``HashMethod``) and the trainer that uses them."""

from . import dhd  # noqa: F401  (registers "dhd")
from .base import HASH_METHODS, HashBatch, HashMethod, build_hash_method

__all__ = ["HASH_METHODS", "HashBatch", "HashMethod", "build_hash_method"]
