"""Shared test fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
    """Folder of the real datasets: $HASHCONDENSE_DATA, else <repo>/../shared/data; else skip."""
    env = os.environ.get("HASHCONDENSE_DATA")
    candidate = pathlib.Path(env) if env else REPO.parent / "shared" / "data"
    if not candidate.is_dir():
        pytest.skip("real datasets not found: set HASHCONDENSE_DATA or place ../shared/data")
    return candidate


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Test tensors are tiny: one intra-op thread is fastest and immune to a busy shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
