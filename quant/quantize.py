"""PLACEHOLDER (to be replaced by Numba kernels): quantize float32 rows to raw GGML blocks."""

import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType

from .types import type_info


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    """x: float32 (..., n_cols) -> uint8 (..., row_bytes)."""
    info = type_info(qtype)
    return quants.quantize(np.asarray(x, np.float32), GGMLQuantizationType(int(info.type))).view(np.uint8)
