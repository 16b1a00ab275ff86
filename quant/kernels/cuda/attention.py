"""Causal attention over the f16 KV cache on the GPU: one thread block per (query token, head), online softmax.

The block walks the keys in chunks of THREADS: thread j scores key c + j (q . k scaled, plus the ALiBi bias
-slope * distance), the chunk's maximum and sum of exponentials rescale the running ones, and thread d
accumulates output dims d and d + THREADS over the chunk's values, so no score array outlives a chunk and the
context length is unbounded. Query at position p sees keys max(0, p - window + 1)..p (window 0: from 0). Grouped
query heads: head h reads kv head h // (n_head / n_kv).
"""

import math

from numba import cuda, float32

from ...fp16 import half_to_float
from .reduce import block_reduce
from .target import Kernel

THREADS = 128
MAX_HEAD_DIM = 2 * THREADS  # two output dims per thread


@Kernel
def attend(qkv, n_head, n_kv, head_dim, k_cache, v_cache, pos, scale, window, slopes, out):
    # qkv (n, ...) queries in columns h * head_dim..; k_cache, v_cache (n_kv, n_ctx, head_dim) uint16 (f16 bits);
    # slopes (n_head,) or (0,); out (n, n_head * head_dim)
    t, h, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    kv = h // (n_head // n_kv)
    p = pos + t
    start = max(0, p - window + 1) if window else 0
    slope = slopes[h] if slopes.size else float32(0.0)
    q = cuda.shared.array(MAX_HEAD_DIM, float32)
    weights = cuda.shared.array(THREADS, float32)
    scratch = cuda.shared.array(THREADS, float32)
    for d in range(tid, head_dim, THREADS):
        q[d] = qkv[t, h * head_dim + d] * scale
    cuda.syncthreads()
    top, total = float32(-math.inf), float32(0.0)
    acc0, acc1 = float32(0.0), float32(0.0)
    for c in range(start, p + 1, THREADS):
        j = c + tid
        s = float32(-math.inf)
        if j <= p:
            s = float32(0.0)
            for d in range(head_dim):  # hot loop: q . k
                s += q[d] * half_to_float(k_cache[kv, j, d])
            s -= slope * float32(p - j)
        new_top = max(top, block_reduce(s, scratch, True))
        e = math.exp(s - new_top) if j <= p else float32(0.0)
        weights[tid] = e
        rescale = math.exp(top - new_top)
        total = total * rescale + block_reduce(e, scratch, False)
        acc0, acc1 = acc0 * rescale, acc1 * rescale
        for jj in range(min(THREADS, p + 1 - c)):  # hot loop: the chunk's values, weighted
            wj = weights[jj]
            if tid < head_dim:
                acc0 += wj * half_to_float(v_cache[kv, c + jj, tid])
            if tid + THREADS < head_dim:
                acc1 += wj * half_to_float(v_cache[kv, c + jj, tid + THREADS])
        top = new_top
        cuda.syncthreads()  # weights are read before the next chunk writes them
    if tid < head_dim:
        out[t, h * head_dim + tid] = acc0 / total
    if tid + THREADS < head_dim:
        out[t, h * head_dim + tid + THREADS] = acc1 / total


def attention(qkv, n_head: int, n_kv: int, head_dim: int, k_cache, v_cache, pos: int, scale: float, window: int,
              slopes, out) -> None:
    """out (n, n_head * head_dim): the attention of qkv's n queries at positions pos.. over the cache."""
    attend[(qkv.shape[0], n_head), THREADS](qkv, n_head, n_kv, head_dim, k_cache, v_cache, pos, float32(scale),
                                            window, slopes, out)
