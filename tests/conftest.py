"""Shared fixtures: a tiny synthetic benchmark generated once per test session; one-thread torch."""
from __future__ import annotations

import pytest
import torch

from fsslib.data import SyntheticConfig, prepare_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic-fast"


@pytest.fixture(scope="session")
def synthetic_source(synthetic_root):
    return prepare_synthetic(synthetic_root, SyntheticConfig.fast(), progress=False)


@pytest.fixture
def single_thread():
    """On tiny inputs, thread synchronisation costs more than the convolutions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
