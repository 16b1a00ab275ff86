"""RMSNorm and LayerNorm on the GPU: one thread block per normalized group of columns.

A group is `width` columns starting at col0 + g * width of a row (g = grid axis y): the whole row for the layer
norms, one head for per-head Q/K norms. With `accumulate` the result is added to out (a post-norm's residual)."""

import math

from numba import cuda, float32

from .reduce import block_reduce
from .target import Kernel

THREADS = 128


@Kernel
def norm_kernel(x, col0, width, w, b, eps, rms, accumulate, out):
    # x, out (n, cols) float32 (out may be x); w, b (width,) or b (0,)
    r, o, t = cuda.blockIdx.x, col0 + cuda.blockIdx.y * width, cuda.threadIdx.x
    scratch = cuda.shared.array(THREADS, float32)
    mean = float32(0.0)
    if not rms:
        s = float32(0.0)
        for i in range(t, width, THREADS):
            s += x[r, o + i]
        mean = block_reduce(s, scratch, False) / float32(width)
    ss = float32(0.0)
    for i in range(t, width, THREADS):  # hot loop
        d = x[r, o + i] - mean
        ss += d * d
    inv = float32(1.0) / math.sqrt(block_reduce(ss, scratch, False) / float32(width) + eps)
    for i in range(t, width, THREADS):
        v = (x[r, o + i] - mean) * inv * w[i]
        if b.size:
            v += b[i]
        out[r, o + i] = out[r, o + i] + v if accumulate else v


def norm(x, w, b, eps: float, rms: bool, out, col0: int = 0, groups: int = 1, accumulate: bool = False) -> None:
    """out[:, col0 + g*width ...] (+)= norm of x's groups of width = len(w) columns; b (0,) for none."""
    norm_kernel[(x.shape[0], groups), THREADS](x, col0, w.shape[0], w, b, float32(eps), int(rms), int(accumulate), out)
