"""Hashing retrieval evaluation: packed codes, Hamming distances and (tie-aware) mAP metrics.

Relevance is single-label (same integer label). Ties in Hamming distance are broken by a seeded
random permutation of the database; see :mod:`hashcondense.retrieval.metrics`.
"""

from .codes import hamming_distances, pack_codes, to_bits
from .metrics import (
    evaluate_retrieval,
    mean_average_precision,
    precision_at_hamming_radius,
    precision_at_k,
    precision_recall_curve,
    tie_aware_map,
)

__all__ = [
    "to_bits",
    "pack_codes",
    "hamming_distances",
    "mean_average_precision",
    "tie_aware_map",
    "precision_at_hamming_radius",
    "precision_recall_curve",
    "precision_at_k",
    "evaluate_retrieval",
]
