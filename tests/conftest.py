"""Shared fixtures: a tiny synthetic benchmark generated once per test session."""
from __future__ import annotations

import pytest

from fsslib.data import SyntheticConfig, prepare_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic-fast"


@pytest.fixture(scope="session")
def synthetic_source(synthetic_root):
    return prepare_synthetic(synthetic_root, SyntheticConfig.fast(), progress=False)
