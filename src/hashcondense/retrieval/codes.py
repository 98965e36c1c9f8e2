"""Binary hash codes: conversion to bits, bit packing and Hamming distances.

Hash codes arrive in several conventions (``{-1, +1}`` from ``sign``, ``{0, 1}`` bits, or raw
real-valued network outputs). Everything here funnels them into one representation, packed
``uint8`` rows, so that Hamming distances are computed by XOR + popcount on 64-bit words instead
of float matrix products.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_bits", "pack_codes", "hamming_distances", "distance_dtype", "as_numpy"]

# Target number of (query, database) pairs handled per chunk: bounds the temporaries
# (a few bytes per pair) to some tens of MiB whatever the database size.
_PAIRS_PER_CHUNK = 1 << 22


def as_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor or array-like) as a numpy array, without copying
    when possible. Torch tensors are detached and moved to the CPU first."""
    if isinstance(x, np.ndarray):
        return x
    detach = getattr(x, "detach", None)
    if callable(detach):  # torch.Tensor, without importing torch here
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array") from exc


def to_bits(codes: Any, name: str = "codes") -> np.ndarray:
    """Convert hash codes of shape (n, K) to a bool bit matrix of shape (n, K).

    Accepted conventions, detected from the values:

    * only 0s and 1s (any dtype, including bool): read as bits directly;
    * anything else (e.g. {-1, +1} or real-valued outputs): ``bit = code >= 0``, i.e. the sign,
      with 0 mapping to +1 (bit 1).

    An array made only of 0s and 1s is therefore always read as bits. Non-finite values raise
    ``ValueError`` because their sign is meaningless.
    """
    arr = as_numpy(codes, name)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, K), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: code length K must be positive, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: expected numeric codes, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name}: complex codes are not supported")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name}: codes contain NaN or infinite values")
    if np.issubdtype(arr.dtype, np.unsignedinteger) or ((arr == 0) | (arr == 1)).all():
        # 0/1 bits. Unsigned ints other than 0/1 have no negative values: nonzero -> 1.
        return arr != 0
    return arr >= 0


def pack_codes(codes: Any, name: str = "codes") -> np.ndarray:
    """Pack codes of shape (n, K) (any convention accepted by :func:`to_bits`) into a
    ``uint8`` array of shape (n, ceil(K / 8)), big-endian bit order as in ``np.packbits``.

    Padding bits of the last byte are 0 for every row, so they never add to a distance.
    """
    return np.packbits(to_bits(codes, name), axis=1)


def distance_dtype(n_bits: int) -> np.dtype:
    """Smallest unsigned integer dtype able to hold Hamming distances in [0, n_bits]."""
    if n_bits <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if n_bits <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def _as_words(packed: np.ndarray) -> np.ndarray:
    """View packed rows (n, B) as uint64 words (n, ceil(B / 8)), zero-padding when needed.

    Zero padding is harmless: padded bits are 0 in every row, so XOR leaves them 0.
    """
    n, nbytes = packed.shape
    n_words = -(-nbytes // 8)
    if nbytes == n_words * 8 and packed.flags.c_contiguous:
        return packed.view(np.uint64)
    out = np.zeros((n, n_words * 8), dtype=np.uint8)
    out[:, :nbytes] = packed
    return out.view(np.uint64)


def _check_packed(x: Any, name: str) -> np.ndarray:
    arr = as_numpy(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected packed codes of shape (n, bytes), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 packed codes (see pack_codes), got {arr.dtype}")
    return arr


def default_chunk_size(n_db: int) -> int:
    """Queries per chunk so that one chunk holds about ``_PAIRS_PER_CHUNK`` pairs."""
    return max(1, _PAIRS_PER_CHUNK // max(1, n_db))


def _hamming_words(q_words: np.ndarray, db_words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the distances between word rows ``q_words`` (c, W) and ``db_words`` (m, W) into
    ``out`` (c, m). ``out`` must be able to hold 64 * W."""
    n_words = q_words.shape[1]
    if n_words == 1:
        np.bitwise_count(q_words[:, 0, None] ^ db_words[None, :, 0], out=out)
        return out
    out[...] = 0
    tmp = np.empty(out.shape, dtype=np.uint8)
    for w in range(n_words):
        np.bitwise_count(q_words[:, w, None] ^ db_words[None, :, w], out=tmp)
        out += tmp
    return out


def hamming_distances(
    q_packed: Any, db_packed: Any, chunk_size: int | None = None
) -> np.ndarray:
    """Hamming distances between packed query codes (nq, B) and packed database codes (ndb, B).

    Inputs are ``uint8`` arrays from :func:`pack_codes` (same number of bytes B). Returns an
    array of shape (nq, ndb) with values in [0, 8 * B], in the smallest unsigned dtype that
    fits (``uint8`` up to 255 bits). Rows are XOR-ed as 64-bit words and counted with
    ``np.bitwise_count``; queries are processed ``chunk_size`` at a time (default: enough to
    keep each chunk's temporaries to a few tens of MiB) so memory beyond the output stays
    bounded.
    """
    q = _check_packed(q_packed, "q_packed")
    db = _check_packed(db_packed, "db_packed")
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"db_packed: byte width {db.shape[1]} differs from q_packed's {q.shape[1]}"
        )
    if chunk_size is None:
        chunk_size = default_chunk_size(db.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be a positive integer, got {chunk_size}")
    qw, dbw = _as_words(q), _as_words(db)
    out = np.empty((q.shape[0], db.shape[0]), dtype=distance_dtype(8 * q.shape[1]))
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        _hamming_words(qw[start:stop], dbw, out[start:stop])
    return out
