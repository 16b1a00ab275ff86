"""Shared fixtures: real models from PyPI (cached by runtime.registry) and small helpers.

Tests compare against float references (transformers, exact dequantization), so models run on the float
kernel path by default here (also in the subprocesses tests start); the integer path, llamba's default,
is checked against the same oracles with its own bounds in test_int_path.py and test_matvec.py.
"""

import os

os.environ.setdefault("LLAMBA_KERNELS", "float")  # before quant is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from vocab_files import llama_cpp_vocab_dir

from runtime import registry  # noqa: E402


@pytest.fixture(scope="session")
def model_path():
    """model_path(name) -> Path of a known real model, fetched into the cache on first use."""
    return lambda name: registry.fetch(name, quiet=True)


@pytest.fixture(scope="session")
def vocab_dir():
    """llama.cpp's vocab GGUFs and test vectors, extracted once from the llama-cpp-python source package."""
    return llama_cpp_vocab_dir()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
