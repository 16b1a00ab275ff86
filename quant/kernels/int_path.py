"""Integer path (ggml's scheme): activations quantized to Q8_0 / Q8_K once per call, then integer dots of
32 weights at a time (quant.simd intrinsics) with float scales per block (quant.int_dot).

Types without an integer kernel (F32, F16, BF16) use the float path (quant.matrix decides).
"""

import numpy as np
from numba import njit, prange

from ..activation import quantize_rows
from ..blocks import QK
from ..interleave import ROWS
from ..types import QK_K, GGMLType
from .int_dot import group_dots, row_dot, row_dots, slow_rows

ROWS_PER_TASK = ROWS  # rows per prange iteration: one group of interleaved rows
INTERLEAVED = 1 << 8  # set in a matrix's code: its blocks are quant.interleave's groups, (n_rows // ROWS, bytes)


@njit(cache=True, nogil=True, inline="always")
def _is_k(code):
    """Whether a weight type takes Q8_K activations (the K-quants) rather than Q8_0 (ggml's vec_dot_type)."""
    code &= INTERLEAVED - 1
    return (code == GGMLType.Q2_K or code == GGMLType.Q3_K or code == GGMLType.Q4_K or code == GGMLType.Q5_K
            or code == GGMLType.Q6_K)


GROUP = 3  # matmul_many always takes this many matrices (Q, K, V; unused slots hold 0 rows): one compiled
# signature for a single matrix, up + gate and Q + K + V (numba compiles a parallel kernel per tuple length, ~8 s each)
TOKENS = 4  # tokens per several-token row dot (int_dot.row_dots): each weight block is unpacked once for them
QUANT_PARALLEL = 8  # tokens from which a product quantizes its activations in parallel
X_TILE = 16384  # bytes of quantized activations per token tile: they stay in L1 while a task's rows pass over them


@njit(cache=True, nogil=True, parallel=True)
def matmul_many(raws, codes, X, Ys):
    """Ys[m] (n_tok, n_rows_m) = X @ W_m.T for the GROUP weight matrices raws[m] (n_rows_m, row_bytes_m) of GGMLType
    codes[m] (or with INTERLEAVED set, its groups (n_rows_m // ROWS, ROWS * row_bytes_m)) that share the input X
    (n_tok, n): X is quantized once per activation type, and one parallel loop covers every row of every matrix; each
    output is the same bits as its token's alone. A task's rows are read from memory
    once (a contiguous stream, left to the hardware prefetchers: software prefetch of the rows ahead measured slower
    on AMD EPYC, Qwen2.5-1.5B decode 43 -> 36 ms without it), then from L2 for each further tile of tokens (X_TILE
    bytes of activations, at least TOKENS tokens), which stays in L1."""
    n_tok, n = X.shape
    n_mats = len(raws)
    qx0, dx0, bs0 = np.empty((n_tok, n), np.int8), np.empty((n_tok, n // QK), np.float32), np.empty((n_tok, n // 16),
                                                                                                    np.int32)
    xs = np.empty((n_tok, n // QK), np.float32)
    qxk, dxk = np.empty((n_tok, n), np.int8), np.empty((n_tok, n // QK_K), np.float32)
    bsk = np.empty((n_tok, n // 16), np.int32)
    # the first task of each matrix (np.empty: numba makes np.zeros in a parallel function a parallel loop of its
    # own, one more fork and join per call)
    starts = np.empty(n_mats + 1, np.int64)
    starts[0] = 0
    need_k = need_0 = False
    for m in range(n_mats):
        rows = raws[m].shape[0] * (ROWS if codes[m] & INTERLEAVED else 1)
        starts[m + 1] = starts[m] + (rows + ROWS_PER_TASK - 1) // ROWS_PER_TASK
        need_k |= _is_k(codes[m])
        need_0 |= not _is_k(codes[m])
    if n_tok < QUANT_PARALLEL:  # a decoding step's few tokens: quantized on this thread
        if need_k:
            quantize_rows(X, QK_K, qxk, dxk, bsk, xs)
        if need_0:
            quantize_rows(X, QK, qx0, dx0, bs0, xs)
    else:  # a prompt's tokens: in parallel
        for t in prange(n_tok):
            if need_k:
                quantize_rows(X[t:t + 1], QK_K, qxk[t:t + 1], dxk[t:t + 1], bsk[t:t + 1], xs[t:t + 1])
            if need_0:
                quantize_rows(X[t:t + 1], QK, qx0[t:t + 1], dx0[t:t + 1], bs0[t:t + 1], xs[t:t + 1])
    tile = max(TOKENS, X_TILE // n // TOKENS * TOKENS)
    for task in prange(starts[n_mats]):
        m = 0
        while task >= starts[m + 1]:
            m += 1
        raw, code, Y = raws[m], codes[m], Ys[m]
        w, rb = raw.reshape(-1), raw.shape[1]  # flat bytes: row r at w[r * rb:]
        qx, dx, bs = (qxk, dxk, bsk) if _is_k(code) else (qx0, dx0, bs0)
        r0 = (task - starts[m]) * ROWS_PER_TASK
        if code & INTERLEAVED:  # a group of rows side by side, lane by lane
            group_dots(code ^ INTERLEAVED, w, (task - starts[m]) * rb, qx, dx, bs, xs, Y, r0)
            continue
        r1 = min(raw.shape[0], r0 + ROWS_PER_TASK)
        if code == GGMLType.Q2_K or code == GGMLType.Q3_K:
            slow_rows(code, w, rb, r0, r1, qx, dx, bs, xs, Y)
            continue
        if n_tok == 1:  # hot loop of a decode step: the token's activation rows taken once, not per row
            q1, d1, b1, x1 = qx[0], dx[0], bs[0], xs[0]
            for r in range(r0, r1):
                Y[0, r] = row_dot(code, w, r * rb, q1, d1, b1, x1)
            continue
        for k0 in range(0, n_tok, tile):
            for r in range(r0, r1):
                _row_tokens(code, w, r * rb, qx, dx, bs, xs, k0, min(n_tok, k0 + tile), Y, r)


@njit(cache=True, nogil=True, inline="always")
def _row_tokens(code, w, base, qx, dx, bs, xs, k, end, out, r):
    """out[k:end, r] = the row at w[base:] against tokens k..end-1. Hot loop: TOKENS tokens at a time (a block
    unpacked once, in registers for all of them), then 3, 2 or 1 for the rest; every output the same bits as the
    token's row_dot alone."""
    while k + TOKENS <= end:
        row_dots(code, w, base, qx, dx, bs, xs, (k, k + 1, k + 2, k + 3), out, r)
        k += TOKENS
    if k + 3 == end:
        row_dots(code, w, base, qx, dx, bs, xs, (k, k + 1, k + 2), out, r)
        k += 3
    if k + 2 <= end:
        row_dots(code, w, base, qx, dx, bs, xs, (k, k + 1), out, r)
        k += 2
    if k < end:
        out[k, r] = row_dot(code, w, base, qx[k], dx[k], bs[k], xs[k])
