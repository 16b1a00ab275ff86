"""Float path (`LLAMBA_KERNELS=float`): decode weight blocks on the fly and multiply them with float32 activations.

matvec: per output row, a float32 lane array accumulates q[j] * (x[j] * sc[s]) (the sub-block scale is
folded into the activation), one horizontal sum per row (fused_dot.py); sub-block offsets use the
activation's sub-block sums, computed once per matvec. matmul: rows are decoded once per tile into float32
(quant.dequant) and multiplied against all tokens by BLAS.
"""

import numpy as np
from numba import njit, prange

from ..dequant import dequantize
from .fused_dot import ACC, row_dot

ROWS_PER_TASK = 16  # rows per prange iteration: one scratch allocation each


@njit(cache=True, nogil=True, parallel=True)
def matvec(raw, code, x, xsum, y):
    """y (n_rows,) = W x; raw (n_rows, row_bytes) uint8 of GGMLType `code`, x (n_cols,), xsum (n_cols // sub,)."""
    n = raw.shape[0]
    for t in prange((n + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        acc = np.empty(ACC, np.float32)  # the row dots' lane accumulators
        for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):  # hot loop: one fused row dot per output
            y[r] = row_dot(code, raw[r], x, xsum, acc)


def sub_sums(x: np.ndarray, sub: int) -> np.ndarray:
    """(..., n_cols) -> (..., n_cols // sub) float32 sums of consecutive sub-blocks (in float64)."""
    return x.reshape(*x.shape[:-1], -1, sub).sum(axis=-1, dtype=np.float64).astype(np.float32)


TILE_BYTES = 1 << 21  # decoded float32 weights per matmul tile (about L2-sized)


def matmul(raw, qtype, n_cols, X, out):
    """out (n_tok, n_rows) = X (n_tok, n_cols) @ W.T; each weight row decoded once per call, in tiles."""
    n_rows = raw.shape[0]
    tile = max(8, TILE_BYTES // (4 * n_cols))
    for r0 in range(0, n_rows, tile):
        r1 = min(r0 + tile, n_rows)
        np.matmul(X, dequantize(raw[r0:r1], qtype, n_cols).T, out=out[:, r0:r1])  # (tile, n_cols) decoded
    return out
