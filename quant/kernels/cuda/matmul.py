"""Tiled matrix products over GGML blocks on the GPU (prompt batches).

A thread block computes a tile of TOKENS x ROWS outputs. Per step of K = 32 columns it decodes the tile's weight
quads into shared memory (quant.quads, each quad once per tile instead of once per token) and stages the
activations beside them; each of the 256 threads then accumulates a 2 x 4 register tile from shared memory.
The epilogue is the matvec's (bias, `add`, columns col0..).
"""

import functools

from numba import cuda, float32

from ...quads import QUAD_BLOCKS, QUADS
from .target import Kernel, blocks_for

ROWS, TOKENS, K = 64, 32, 32  # output tile (weight rows x tokens) and columns per step
TX, TY = 16, 16  # threads: TX over rows (4 rows each), TY over tokens (2 tokens each)
RT, TT = ROWS // TX, TOKENS // TY
PAD = K + 1  # shared rows padded by one column: the inner loop's threads hit different banks


@functools.cache
def kernel(qtype) -> Kernel:
    quad = QUADS[qtype]
    block, size = QUAD_BLOCKS[qtype]
    per_block = block // 4

    def matmul(raw, x, bias, add, y, col0):
        # raw (n_rows, row_bytes) uint8; x (n_tokens, n_cols) float32; y (n_tokens, >= col0 + n_rows)
        n_rows, n_tok, n_quads = raw.shape[0], x.shape[0], x.shape[1] // 4
        r0, t0 = cuda.blockIdx.x * ROWS, cuda.blockIdx.y * TOKENS
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * TX + tx
        ws = cuda.shared.array((ROWS, PAD), float32)  # the step's decoded weights
        xs = cuda.shared.array((TOKENS, PAD), float32)
        acc = cuda.local.array((TT, RT), float32)
        for a in range(TT):
            for b in range(RT):
                acc[a, b] = 0.0
        for k0 in range(0, n_quads, K // 4):  # quads k0.. of every row
            for e in range(tid, ROWS * K // 4, TX * TY):  # decode: quad e % 8 of tile row e // 8
                r, kq = e // (K // 4), e % (K // 4)
                k = k0 + kq
                v0 = v1 = v2 = v3 = float32(0.0)
                if r0 + r < n_rows and k < n_quads:
                    v0, v1, v2, v3 = quad(raw[r0 + r], (k // per_block) * size, k % per_block)
                ws[r, 4 * kq], ws[r, 4 * kq + 1], ws[r, 4 * kq + 2], ws[r, 4 * kq + 3] = v0, v1, v2, v3
            for e in range(tid, TOKENS * K, TX * TY):  # stage activations
                t, c = e // K, e % K
                xs[t, c] = x[t0 + t, 4 * k0 + c] if t0 + t < n_tok and 4 * k0 + c < x.shape[1] else float32(0.0)
            cuda.syncthreads()
            for c in range(K):  # hot loop: a 2 x 4 outer product per column
                for a in range(TT):
                    xv = xs[ty * TT + a, c]
                    for b in range(RT):
                        acc[a, b] += xv * ws[tx * RT + b, c]
            cuda.syncthreads()
        for a in range(TT):
            for b in range(RT):
                t, r = t0 + ty * TT + a, r0 + tx * RT + b
                if t < n_tok and r < n_rows:
                    v = acc[a, b] + bias[r] if bias.size else acc[a, b]
                    y[t, col0 + r] = y[t, col0 + r] + v if add else v

    return Kernel(matmul)


def matmul(qtype, raw, x, y, bias, add: bool, col0: int = 0) -> None:
    """y[:, col0:col0 + n_rows] (+)= x @ W.T + bias; bias (0,) for none."""
    grid = (blocks_for(raw.shape[0], ROWS), blocks_for(x.shape[0], TOKENS))
    kernel(qtype)[grid, (TX, TY)](raw, x, bias, int(add), y, col0)
