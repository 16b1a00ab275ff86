"""Matrix-vector products over GGML blocks on the GPU (token generation, and the experts of a MoE layer).

One warp per group of ROWS rows: lane l decodes quads l, l+32, ... of each row (quant.quads) and multiplies them
with four consecutive activations, so a warp's loads fall on neighbouring bytes of a row and of x, and the
activations loaded serve ROWS rows. The 32 partial sums of a row meet in shared memory. The epilogue adds a bias
and, with `add`, the output's old value (a residual); outputs go to columns col0.. of y (one matrix of a fused
Q|K|V or up|gate output of mixed types).

Every output vector i (grid axis y) has its own input x[i // x_div] and, with `ids`, its own matrix: rows
ids[i] * n_rows.. of raw (a MoE layer's stacked experts). One launch covers the tokens of a small batch.
"""

import functools

import numpy as np
from numba import cuda, float32

from ...quads import QUAD_BLOCKS, QUADS
from .target import Kernel, blocks_for, nothing

WARPS, ROWS = 4, 4  # warps per thread block, rows per warp


@functools.cache
def kernel(qtype) -> Kernel:
    quad = QUADS[qtype]
    block, size = QUAD_BLOCKS[qtype]
    per_block = block // 4

    def matvec(raw, n_rows, x, x_div, ids, bias, add, y, col0):
        # raw (n_rows or n_expert * n_rows, row_bytes) uint8; x (m_in, n_cols); y (m, >= col0 + n_rows);
        # ids (m,) int32 or (0,)
        lane, w, i = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.y
        r0 = (cuda.blockIdx.x * WARPS + w) * ROWS
        part = cuda.shared.array((WARPS, ROWS, 32), float32)
        acc = cuda.local.array(ROWS, float32)
        for j in range(ROWS):
            acc[j] = 0.0
        base = r0 + (ids[i] * n_rows if ids.size else 0)
        xi = x[i // x_div]
        for k in range(lane, xi.size // 4, 32):  # hot loop: quad k of each row against x[4k:4k+4]
            x0, x1, x2, x3 = xi[4 * k], xi[4 * k + 1], xi[4 * k + 2], xi[4 * k + 3]
            at, j4 = (k // per_block) * size, k % per_block
            for j in range(ROWS):
                if r0 + j < n_rows:
                    v = quad(raw[base + j], at, j4)
                    acc[j] += v[0] * x0 + v[1] * x1 + v[2] * x2 + v[3] * x3
        for j in range(ROWS):
            part[w, j, lane] = acc[j]
        cuda.syncthreads()
        r = r0 + lane
        if lane < ROWS and r < n_rows:  # lane j sums row j's partials
            total = float32(0.0)
            for l in range(32):
                total += part[w, lane, l]
            if bias.size:
                total += bias[r]
            y[i, col0 + r] = y[i, col0 + r] + total if add else total

    return Kernel(matvec)


def matvec(qtype, raw, n_rows: int, x, y, bias, add: bool, col0: int = 0, ids=None, x_div: int = 1) -> None:
    """y[:, col0:col0 + n_rows] (+)= W x + bias for every output vector (module docstring); bias (0,) for none."""
    ids = nothing(np.int32) if ids is None else ids
    grid = blocks_for(n_rows, WARPS * ROWS), y.shape[0]
    kernel(qtype)[grid, (32, WARPS)](raw, n_rows, x, x_div, ids, bias, int(add), y, col0)
