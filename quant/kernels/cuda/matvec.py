"""Matrix-vector products over GGML blocks on the GPU (token generation, and the experts of a MoE layer).

One warp per output row: lane l decodes quads l, l+32, ... of the row (quant.quads) and multiplies each with
four consecutive activations, so a warp's loads fall on neighbouring bytes of the row and of x. The 32 partial
sums meet in shared memory. The epilogue adds a bias and, with `add`, the output's old value (a residual);
outputs go to columns col0.. of y (one matrix of a fused Q|K|V or up|gate output of mixed types).

Every output vector i (grid axis y) has its own input x[i // x_div] and, with `ids`, its own matrix: rows
ids[i] * n_rows.. of raw (a MoE layer's stacked experts). One launch covers the tokens of a small batch.
"""

import functools

import numpy as np
from numba import cuda, float32

from ...quads import QUAD_BLOCKS, QUADS
from .reduce import lanes_sum
from .target import Kernel, blocks_for

WARPS = 4  # rows per thread block


@functools.cache
def kernel(qtype) -> Kernel:
    quad = QUADS[qtype]
    block, size = QUAD_BLOCKS[qtype]
    per_block = block // 4

    def matvec(raw, n_rows, x, x_div, ids, bias, add, y, col0):
        # raw (n_rows or n_expert * n_rows, row_bytes) uint8; x (m_in, n_cols); y (m, >= col0 + n_rows);
        # ids (m,) int32 or (0,)
        lane, w = cuda.threadIdx.x, cuda.threadIdx.y
        r, i = cuda.blockIdx.x * WARPS + w, cuda.blockIdx.y
        part = cuda.shared.array((WARPS, 32), float32)
        acc = float32(0.0)
        if r < n_rows:
            row = raw[r + ids[i] * n_rows] if ids.size else raw[r]
            xi = x[i // x_div]
            for k in range(lane, xi.size // 4, 32):  # hot loop: quad k of the row against x[4k:4k+4]
                v = quad(row, (k // per_block) * size, k % per_block)
                acc += v[0] * xi[4 * k] + v[1] * xi[4 * k + 1] + v[2] * xi[4 * k + 2] + v[3] * xi[4 * k + 3]
        part[w, lane] = acc
        total = lanes_sum(part, w)
        if lane == 0 and r < n_rows:
            if bias.size:
                total += bias[r]
            y[i, col0 + r] = y[i, col0 + r] + total if add else total

    return Kernel(matvec)


def matvec(qtype, raw, n_rows: int, x, y, bias, add: bool, col0: int = 0, ids=None, x_div: int = 1) -> None:
    """y[:, col0:col0 + n_rows] (+)= W x + bias for every output vector (module docstring); bias (0,) for none."""
    ids = _no_ids() if ids is None else ids
    kernel(qtype)[(blocks_for(n_rows, WARPS), y.shape[0]), (32, WARPS)](raw, n_rows, x, x_div, ids, bias, int(add), y,
                                                                        col0)


@functools.cache
def _no_ids():
    return cuda.to_device(np.zeros(0, np.int32))
