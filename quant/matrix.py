"""QMatrix: a (n_rows, n_cols) weight matrix stored as raw GGML blocks, computed on without unpacking it.

PLACEHOLDER implementation: matvec/matmul dequantize; the Numba kernels replace this.
"""

from dataclasses import dataclass

import numpy as np

from .dequant import dequantize
from .types import GGMLType, row_bytes


@dataclass
class QMatrix:
    raw: np.ndarray  # (n_rows, row_bytes) uint8, usually a view into a memory map
    qtype: GGMLType
    n_cols: int

    def __post_init__(self):
        self.qtype = GGMLType(self.qtype)
        assert self.raw.dtype == np.uint8 and self.raw.ndim == 2
        assert self.raw.shape[1] == row_bytes(self.qtype, self.n_cols)

    @property
    def n_rows(self) -> int:
        return self.raw.shape[0]

    @property
    def shape(self) -> tuple:
        return (self.n_rows, self.n_cols)

    def dequantize(self) -> np.ndarray:  # (n_rows, n_cols) float32
        return dequantize(self.raw, self.qtype, self.n_cols)

    def get_rows(self, ids) -> np.ndarray:  # (len(ids), n_cols) float32, e.g. an embedding lookup
        return dequantize(self.raw[np.asarray(ids)], self.qtype, self.n_cols)

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # x (n_cols,) float32 -> (n_rows,) float32
        y = self.dequantize() @ x
        if out is not None:
            out[:] = y
            return out
        return y

    def matmul(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # X (n_tokens, n_cols) float32 -> (n_tokens, n_rows) float32
        Y = X @ self.dequantize().T
        if out is not None:
            out[:] = Y
            return out
        return Y
