"""Integer path (ggml's scheme): activations quantized to Q8_0 / Q8_K once per call, then integer dots of
32 weights at a time (quant.simd intrinsics) with float scales per block (quant.int_dot).

Types without an integer kernel (F32, F16, BF16) use the float path (quant.matrix decides).
"""

import numpy as np
from numba import njit, prange

from ..activation import quantize_activations, quantize_rows
from ..blocks import QK
from ..types import QK_K, GGMLType
from .int_dot import row_dot, row_dots
from .simd import prefetch

ROWS_PER_TASK = 16  # rows per prange iteration
PREFETCH_ROWS = 4  # rows ahead whose bytes are prefetched (weights are read once per token: from memory)


@njit(cache=True, nogil=True, inline="always")
def _is_k(code):
    """Whether a weight type takes Q8_K activations (the K-quants) rather than Q8_0 (ggml's vec_dot_type)."""
    return (code == GGMLType.Q2_K or code == GGMLType.Q3_K or code == GGMLType.Q4_K or code == GGMLType.Q5_K
            or code == GGMLType.Q6_K)


GROUP = 3  # matvec_many always takes this many matrices (Q, K, V; unused slots hold 0 rows): one compiled
# signature for a single matrix, up + gate and Q + K + V (numba compiles a parallel kernel per tuple length, ~8 s each)


@njit(cache=True, nogil=True, parallel=True)
def matvec_many(raws, codes, x, ys):
    """ys[m] (n_rows_m,) = W_m x for the GROUP weight matrices raws[m] (n_rows_m, row_bytes_m) of GGMLType codes[m]
    that share the input x (n,): x is quantized once per activation type, and one parallel loop covers every row."""
    n, n_mats = x.shape[0], len(raws)
    X = x.reshape((1, n))
    qx0, dx0, bs0 = np.empty((1, n), np.int8), np.empty((1, n // QK), np.float32), np.empty((1, n // 16), np.int32)
    xs = np.empty((1, n // QK), np.float32)
    qxk, dxk, bsk = np.empty((1, n), np.int8), np.empty((1, n // QK_K), np.float32), np.empty((1, n // 16), np.int32)
    starts = np.zeros(n_mats + 1, np.int64)  # first task of each matrix
    need_k = need_0 = False
    for m in range(n_mats):
        starts[m + 1] = starts[m] + (raws[m].shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK
        need_k |= _is_k(codes[m])
        need_0 |= not _is_k(codes[m])
    if need_k:
        quantize_rows(X, QK_K, qxk, dxk, bsk, xs)
    if need_0:
        quantize_rows(X, QK, qx0, dx0, bs0, xs)
    for task in prange(starts[n_mats]):
        m = 0
        while task >= starts[m + 1]:
            m += 1
        raw, code, y = raws[m], codes[m], ys[m]
        w = raw.reshape(-1)  # flat bytes: row r at w[r * row_bytes:]
        qx, dx, bs = (qxk[0], dxk[0], bsk[0]) if _is_k(code) else (qx0[0], dx0[0], bs0[0])
        r0 = (task - starts[m]) * ROWS_PER_TASK
        rb = raw.shape[1]
        end = min(raw.shape[0], r0 + ROWS_PER_TASK) * rb
        # hot loop: one output per weight row; prefetch the row PREFETCH_ROWS ahead, then its integer dot
        for r in range(r0, min(raw.shape[0], r0 + ROWS_PER_TASK)):
            for o in range((r + PREFETCH_ROWS) * rb, min((r + PREFETCH_ROWS + 1) * rb, end), 64):
                prefetch(w, o)
            y[r] = row_dot(code, w, r * rb, qx, dx, bs, xs[0])


TOKENS = 4  # tokens per several-token row dot (int_dot.row_dots): each weight block is unpacked once for them
X_TILE = 16384  # bytes of quantized activations per token tile: they stay in L1 while a task's rows pass over them


@njit(cache=True, nogil=True, parallel=True)
def _matmul(raw, code, qx, dx, bs, xs, out):
    """out (n_tok, n_rows) = W (n_rows, n) @ Q8(x).T. A task's rows are read from memory once, then from L2 for
    each tile of tokens (X_TILE bytes of activations, at least TOKENS tokens), which stays in L1."""
    n, n_tok, w = raw.shape[0], qx.shape[0], raw.reshape(-1)  # w: flat bytes, row r at w[r * row_bytes:]
    tile = max(TOKENS, X_TILE // qx.shape[1] // TOKENS * TOKENS)
    for t in prange((n + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        for k0 in range(0, n_tok, tile):
            k1 = min(n_tok, k0 + tile)
            for r in range(t * ROWS_PER_TASK, min(n, (t + 1) * ROWS_PER_TASK)):
                # hot loop: the row against TOKENS tokens at a time (a block unpacked once, in registers for all
                # of them), then 3, 2 or 1 for the rest; every output the same bits as the token's row_dot alone
                base, k = r * raw.shape[1], k0
                while k + TOKENS <= k1:
                    row_dots(code, w, base, qx, dx, bs, xs, (k, k + 1, k + 2, k + 3), out, r)
                    k += TOKENS
                if k + 3 == k1:
                    row_dots(code, w, base, qx, dx, bs, xs, (k, k + 1, k + 2), out, r)
                    k += 3
                if k + 2 <= k1:
                    row_dots(code, w, base, qx, dx, bs, xs, (k, k + 1), out, r)
                    k += 2
                if k < k1:
                    out[k, r] = row_dot(code, w, base, qx[k], dx[k], bs[k], xs[k])


def matmul(raw, code, block, X, out):
    """out (n_tok, n_rows) = X (n_tok, n_cols) @ W.T with Q8-quantized activations."""
    _matmul(raw, code, *quantize_activations(X, block), out)
    return out
