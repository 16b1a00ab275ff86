"""PLACEHOLDER (to be replaced by Numba kernels): dequantize raw GGML blocks to float32."""

import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType

from .types import row_bytes, type_info


def dequantize(raw: np.ndarray, qtype, n_cols: int) -> np.ndarray:
    """raw: uint8 (..., row_bytes) -> float32 (..., n_cols)."""
    info = type_info(qtype)
    assert raw.shape[-1] == row_bytes(info.type, n_cols)
    return quants.dequantize(raw, GGMLQuantizationType(int(info.type))).astype(np.float32)
