"""Hashing methods behind one interface (``HashMethod``) and the trainer that uses them."""

from . import dhd, dpn, orthohash  # noqa: F401  (register "dhd", "dpn", "orthohash")
from .base import HASH_METHODS, HashBatch, HashMethod, build_hash_method

__all__ = ["HASH_METHODS", "HashBatch", "HashMethod", "build_hash_method"]
