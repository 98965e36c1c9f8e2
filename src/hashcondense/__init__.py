"""hashcondense: condense image training sets for deep hashing retrieval (IEM and baselines)."""

__version__ = "0.1.0"
