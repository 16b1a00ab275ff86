"""Shared pieces of the matvec kernels: a row's kernel layout, and the packed K-quant scale fields.

layout(): a row of a weight type is walked in blocks of BLOCK elements with sub-blocks of SUB sharing a scale
(the float kernels sum activations per sub-block); the float types (F32/F16/BF16) use chunks of up to CHUNK
values (a power of two dividing the row).
"""

import numpy as np
from numba import njit

from .types import GGMLType, type_info

CHUNK = 256  # elements per "block" of the float types
_SUB_SIZE = {GGMLType.Q2_K: 16, GGMLType.Q3_K: 16, GGMLType.Q6_K: 16}  # the others: 32


def layout(qtype, n_cols: int) -> tuple[int, int]:
    """(elements per kernel block, elements per sub-block) of a row of n_cols elements of a weight type."""
    info = type_info(qtype)
    if info.block_size > 1:
        return info.block_size, _SUB_SIZE.get(info.type, 32)
    chunk = CHUNK
    while n_cols % chunk:
        chunk //= 2
    return chunk, chunk


jit = njit(cache=True, nogil=True, inline="always")


@jit
def q3k_scale(row, o, s):
    """The signed 6-bit scale s (0..15) of the 12-byte Q3_K scales at row[o:o+12]."""
    lo = np.int64(row[o + s]) & 0xF if s < 8 else np.int64(row[o + s - 8]) >> 4
    hi = (np.int64(row[o + 8 + s % 4]) >> (2 * (s // 4))) & 3
    return (lo | (hi << 4)) - 32


@jit
def scale_min_k4(row, o, j):
    """The 6-bit (scale, min) pair j of the 12-byte Q4_K/Q5_K scales at row[o:o+12]."""
    if j < 4:
        return np.int64(row[o + j]) & 63, np.int64(row[o + j + 4]) & 63
    a, b, c = np.int64(row[o + j + 4]), np.int64(row[o + j - 4]), np.int64(row[o + j])
    return (a & 0xF) | ((b >> 6) << 4), (a >> 4) | ((c >> 6) << 4)
