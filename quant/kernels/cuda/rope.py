"""RoPE on the GPU, fused with the KV-cache store: one thread block per (token, head) of a Q|K|V row.

qkv (n, (n_head + 2 n_head_kv) head_dim) holds each token's query heads, then key heads, then value heads. Query
and key heads have their first n_rot dims rotated in place (pairs (2i, 2i+1), or (i, i + n_rot/2) for neox) by
the angles of position pos + token; key and value heads are then written to the f16 cache (fp16 bits, rounded to
nearest even by quant.fp16). n_rot = 0: no rotation (learned positions, ALiBi).
"""

from numba import cuda

from ...fp16 import float_to_half
from .target import Kernel

THREADS = 64


@Kernel
def rope_store(qkv, n_head, n_kv, head_dim, n_rot, neox, cos, sin, pos, k_cache, v_cache):
    # cos, sin (n_ctx, n_rot/2) float32; k_cache, v_cache (n_kv, n_ctx, head_dim) uint16
    t, h, tid = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    p, o = pos + t, h * head_dim
    half = n_rot // 2
    stride, step = (1, half) if neox else (2, 1)  # pair i is (stride i, stride i + step)
    if h < n_head + n_kv:
        for i in range(tid, half, THREADS):
            a, b = qkv[t, o + stride * i], qkv[t, o + stride * i + step]
            c, s = cos[p, i], sin[p, i]
            qkv[t, o + stride * i] = a * c - b * s
            qkv[t, o + stride * i + step] = a * s + b * c
    if h >= n_head:
        cuda.syncthreads()  # uniform per block: the rotated key is complete
        kv = h - n_head
        cache = k_cache if kv < n_kv else v_cache
        for d in range(tid, head_dim, THREADS):
            cache[kv % n_kv, p, d] = float_to_half(qkv[t, o + d])


def rope(qkv, n_head: int, n_kv: int, head_dim: int, n_rot: int, neox: bool, cos, sin, pos: int, k_cache,
         v_cache) -> None:
    """Rotate the Q and K heads of qkv for positions pos.. and store K and V at those positions of the cache."""
    rope_store[(qkv.shape[0], n_head + 2 * n_kv), THREADS](qkv, n_head, n_kv, head_dim, n_rot, int(neox), cos, sin,
                                                           pos, k_cache, v_cache)
