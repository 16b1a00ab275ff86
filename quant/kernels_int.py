"""Integer path (ggml's scheme): activations quantized to Q8_0 / Q8_K once per call, an exact integer dot
per weight sub-block, float scales applied after.

Numba widens int8 arithmetic to 64-bit lanes (4 per AVX2 register), so the integer sums are computed in
float32 lanes instead: every partial sum of a sub-block is an integer below 2^24 (at most 32 terms of
|q| <= 128 times |qx| <= 127), hence exact in any summation order; the result equals ggml's int32 dot.
Each decoded weight block is reused across all tokens of the batch.
"""

import numpy as np
from numba import njit, prange

from .activation import quantize_q8_0, quantize_q8_k
from .fused_dot import FAST
from .kernel_blocks import MAX_SUB, decode_block
from .kernels_float import sub_sums
from .types import QK_K


@njit(cache=True, nogil=True, inline="always")
def _row_dots(code, block, sub, row, qx, dx, qblock, xmin, q, sc, mn, y):
    """y (n_tok,) = one quantized row dotted with every quantized activation row.

    qx (n_tok, n_cols) integer quants, dx (n_tok, n_cols // qblock) their scales,
    xmin (n_tok, n_cols // sub) = dx * (sum of qx over each weight sub-block).
    """
    nsub = block // sub
    y[:] = 0.0
    for ib in range(qx.shape[1] // block):
        decode_block(code, row, ib, q, sc, mn)  # decoded once, used for every token
        for t in range(qx.shape[0]):
            total = np.float32(0.0)
            for s in range(nsub):
                o = ib * block + s * sub
                isum = np.float32(0.0)
                for l in range(sub):  # hot loop: exact integer sum
                    isum += q[s * sub + l] * qx[t, o + l]
                total += sc[s] * dx[t, o // qblock] * isum - mn[s] * xmin[t, ib * nsub + s]
            y[t] += total


@njit(cache=True, nogil=True, fastmath=FAST)
def _row_dots_any(code, block, sub, row, qx, dx, qblock, xmin, q, sc, mn, y):
    _row_dots(code, block, sub, row, qx, dx, qblock, xmin, q, sc, mn, y)


@njit(cache=True, nogil=True, parallel=True)
def _matmul(raw, code, block, sub, qx, dx, qblock, xmin, out):
    """out (n_rows, n_tok) = W @ dequant(qx).T, weights never decoded to float."""
    for r in prange(raw.shape[0]):
        q = np.empty(block, np.float32)
        sc = np.empty(MAX_SUB, np.float32)
        mn = np.empty(MAX_SUB, np.float32)
        _row_dots_any(code, block, sub, raw[r], qx, dx, qblock, xmin, q, sc, mn, out[r])


def quantize_activations(X: np.ndarray, block: int, sub: int):
    """X (n_tok, n_cols) -> (qx, dx, qblock, xmin): Q8_K for 256-blocks, Q8_0 for 32-blocks."""
    qblock = QK_K if block == QK_K else 32
    qx, dx = (quantize_q8_k if qblock == QK_K else quantize_q8_0)(X)
    xmin = sub_sums(qx, sub) * np.repeat(dx, qblock // sub, axis=-1)  # (n_tok, n_cols // sub)
    return qx, dx, qblock, xmin


def matmul(raw, code, block, sub, X):
    """(n_tok, n_rows) = X (n_tok, n_cols) @ W.T with Q8-quantized activations."""
    qx, dx, qblock, xmin = quantize_activations(X, block, sub)
    out = np.empty((raw.shape[0], X.shape[0]), np.float32)  # (n_rows, n_tok)
    _matmul(raw, code, block, sub, qx, dx, qblock, xmin, out)
    return out.T
