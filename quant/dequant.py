"""Dequantize raw GGML blocks to float32: one small Numba decoder per type, and a threaded driver.

Every decoder has the signature `decode(src, s, dst, o, n)` (block layouts from quant.blocks): it decodes the n
consecutive blocks whose bytes start at src[s] (uint8, 1-D) into dst[o : o + n*block_size] (float32, 1-D).
Other kernels reuse them through `BLOCK_DECODERS` (one block into a scratch buffer:
`decode(row, b*type_size, buf, 0, 1)`). They follow ggml's `dequantize_row_*` and round like it (products, then
sums; no fused multiply-add), so the results are bit-exact with `gguf.quants`.

Hot loops work on slices (contiguous views) and store several outputs per iteration: with plain
constant-trip loops LLVM unrolls them into scalar code (Numba leaves the SLP vectorizer off), while
these vectorize (3-4 G elements/s per thread for Q4_K/Q2_K in cache, versus 0.5 for the scalar form).

The driver splits the blocks across `numba.get_num_threads()` Python threads (the decoders release the
GIL) instead of a `prange` kernel: one parallel kernel dispatching on the type took ~50 s to compile
cold and 2.5 s to load from the cache (measured), and per-type parallel kernels built by a factory are
not cacheable; this way each type compiles (a few seconds) only when it is first used.
"""

import functools
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from . import blocks as B
from .blocks import KVALUES_IQ4NL, QK, q2k_scale_min, q3k_scale, q6k_scale, scale_min_k4
from .fp16 import bfloat_to_float, half_to_float, load_f16, load_f32, load_u32
from .types import QK_K, GGMLType, QuantTypeError, row_bytes, type_info

_jit = njit(cache=True, nogil=True)


# ---- float types (one element per block) ----

@_jit
def decode_f32(src, s, dst, o, n):
    dst[o:o + n] = src[s:s + 4 * n].view(np.float32)


@_jit
def decode_f16(src, s, dst, o, n):
    halves = src[s:s + 2 * n].view(np.uint16)
    for i in range(n):  # hot loop
        dst[o + i] = half_to_float(halves[i])


@_jit
def decode_bf16(src, s, dst, o, n):
    halves = src[s:s + 2 * n].view(np.uint16)
    for i in range(n):  # hot loop
        dst[o + i] = bfloat_to_float(halves[i])


# ---- 32-element blocks ----

@_jit
def _nibbles(src, q_at, hbits, d, m, zero, dst, o, table=None):
    """32 elements from the 16 bytes of nibbles at src[q_at]: low nibble of byte j = element j, high = j+16.

    hbits: the 5th bits as a 32-bit mask (bit j for element j; 0 for 4-bit types). Value (q - zero)*d,
    plus m unless m is None; with a table (IQ4_NL's levels) d*table[q]. (None arguments are compile-time.)
    """
    qs = src[q_at:q_at + 16]
    y = dst[o:o + 32]
    for j in range(len(qs)):  # hot loop (a trip count LLVM cannot fold keeps it a vectorizable loop)
        lo = (qs[j] & 0x0F) | (((hbits >> j) & 1) << 4)
        hi = (qs[j] >> 4) | (((hbits >> (j + 16)) & 1) << 4)
        if table is not None:
            y[j] = d * np.float32(table[lo])
            y[j + 16] = d * np.float32(table[hi])
        elif m is None:
            y[j] = d * np.float32(lo - zero)
            y[j + 16] = d * np.float32(hi - zero)
        else:
            y[j] = d * np.float32(lo - zero) + m
            y[j + 16] = d * np.float32(hi - zero) + m


@_jit
def decode_q4_0(src, s, dst, o, n):
    for b in range(n):
        at = s + B.Q4_0_SIZE * b
        _nibbles(src, at + B.Q4_0_QS, 0, load_f16(src, at), None, 8, dst, o + QK * b)


@_jit
def decode_q4_1(src, s, dst, o, n):
    for b in range(n):
        at = s + B.Q4_1_SIZE * b
        _nibbles(src, at + B.Q4_1_QS, 0, load_f16(src, at), load_f16(src, at + B.Q4_1_M), 0, dst, o + QK * b)


@_jit
def decode_q5_0(src, s, dst, o, n):
    for b in range(n):
        at = s + B.Q5_0_SIZE * b
        _nibbles(src, at + B.Q5_0_QS, load_u32(src, at + B.Q5_0_QH), load_f16(src, at), None, 16, dst, o + QK * b)


@_jit
def decode_q5_1(src, s, dst, o, n):
    for b in range(n):
        at = s + B.Q5_1_SIZE * b
        _nibbles(src, at + B.Q5_1_QS, load_u32(src, at + B.Q5_1_QH), load_f16(src, at), load_f16(src, at + B.Q5_1_M), 0,
                 dst, o + QK * b)


@_jit
def decode_q8_0(src, s, dst, o, n):
    for b in range(n):
        at, to = s + B.Q8_0_SIZE * b, o + QK * b
        d = load_f16(src, at)
        qs = src[at + B.Q8_0_QS:at + B.Q8_0_QS + 32]
        y = dst[to:to + 32]
        for j in range(len(qs)):  # hot loop (a trip count LLVM cannot fold keeps it a vectorizable loop)
            y[j] = np.float32(np.int8(qs[j])) * d


@_jit
def decode_iq4_nl(src, s, dst, o, n):  # Q4_0's nibble layout, levels from a table
    for b in range(n):
        at = s + B.IQ4_NL_SIZE * b
        _nibbles(src, at + B.IQ4_NL_QS, 0, load_f16(src, at), None, 0, dst, o + QK * b, KVALUES_IQ4NL)


# ---- 256-element super-blocks (K-quants) ----
# Q2_K, Q3_K and Q6_K: each half of 128 elements holds 4 planes of 32 (bit fields of the same 32 bytes),
# each plane 2 sub-blocks of 16 with their own scale; sub-block k = 8*half + 2*plane + (l >= 16).

@_jit
def decode_q2_k(src, s, dst, o, n):
    dl = np.empty(8, np.float32)
    ml = np.empty(8, np.float32)
    for b in range(n):
        at, to = s + B.Q2_K_SIZE * b, o + QK_K * b
        d = load_f16(src, at + B.Q2_K_D)
        dmin = load_f16(src, at + B.Q2_K_DMIN)
        for half in range(2):
            for i in range(8):
                sc, mn = q2k_scale_min(src, at, half * 8 + i)
                dl[i] = d * np.float32(sc)
                ml[i] = dmin * np.float32(mn)
            qs = src[at + B.Q2_K_QS + half * 32:at + B.Q2_K_QS + 32 + half * 32]
            y = dst[to + half * 128:to + half * 128 + 128]
            for l in range(16):  # hot loop: 4 planes x 2 sub-blocks
                for p in range(4):
                    y[p * 32 + l] = dl[2 * p] * np.float32((qs[l] >> (2 * p)) & 3) - ml[2 * p]
                    y[p * 32 + l + 16] = dl[2 * p + 1] * np.float32((qs[l + 16] >> (2 * p)) & 3) - ml[2 * p + 1]


@_jit
def decode_q3_k(src, s, dst, o, n):
    dl = np.empty(8, np.float32)
    for b in range(n):
        at, to = s + B.Q3_K_SIZE * b, o + QK_K * b
        d = load_f16(src, at + B.Q3_K_D)
        # high bit of element 128 half + 32 p + l: bit 4 half + p of hmask[l]
        hmask = src[at + B.Q3_K_HMASK:at + B.Q3_K_HMASK + 32]
        for half in range(2):
            for i in range(8):
                dl[i] = d * np.float32(q3k_scale(src, at + B.Q3_K_SCALES, half * 8 + i))
            qs = src[at + B.Q3_K_QS + half * 32:at + B.Q3_K_QS + 32 + half * 32]
            y = dst[to + half * 128:to + half * 128 + 128]
            for l in range(16):  # hot loop: 4 planes x 2 sub-blocks, q = low 2 bits - (high bit ? 0 : 4)
                for p in range(4):
                    h = 4 * half + p
                    q1 = ((qs[l] >> (2 * p)) & 3) - 4 + 4 * ((hmask[l] >> h) & 1)
                    q2 = ((qs[l + 16] >> (2 * p)) & 3) - 4 + 4 * ((hmask[l + 16] >> h) & 1)
                    y[p * 32 + l] = dl[2 * p] * np.float32(q1)
                    y[p * 32 + l + 16] = dl[2 * p + 1] * np.float32(q2)


@_jit
def _k4_super_blocks(src, s, type_size, qh_at, qs_at, dst, o, n):  # Q4_K and Q5_K share d, dmin, scales
    """n Q4_K (qh_at < 0) or Q5_K super-blocks: 8 sub-blocks of 32, value d*sc*q - dmin*min.

    qh_at, qs_at: offsets inside a block. Sub-blocks 2g and 2g+1 are the low and high nibbles of
    qs[32g:32g+32]; the 5th bit of element 32j + l is bit j of qh[l].
    """
    dl = np.empty(8, np.float32)
    ml = np.empty(8, np.float32)
    for b in range(n):
        at, to = s + type_size * b, o + QK_K * b
        d = load_f16(src, at + B.Q4_K_D)
        dmin = load_f16(src, at + B.Q4_K_DMIN)
        for j in range(8):
            sc, mn = scale_min_k4(src, at + B.Q4_K_SCALES, j)
            dl[j] = d * np.float32(sc)
            ml[j] = dmin * np.float32(mn)
        qs = src[at + qs_at:at + qs_at + 128]
        y = dst[to:to + QK_K]
        if qh_at < 0:
            for l in range(32):  # hot loop: 4 byte groups x 2 nibbles
                for g in range(4):
                    y[64 * g + l] = dl[2 * g] * np.float32(qs[32 * g + l] & 0x0F) - ml[2 * g]
                    y[64 * g + 32 + l] = dl[2 * g + 1] * np.float32(qs[32 * g + l] >> 4) - ml[2 * g + 1]
        else:
            qh = src[at + qh_at:at + qh_at + 32]
            for l in range(32):  # hot loop: 4 byte groups x 2 nibbles, plus the 5th bits
                for g in range(4):
                    lo = (qs[32 * g + l] & 0x0F) | (((qh[l] >> (2 * g)) & 1) << 4)
                    hi = (qs[32 * g + l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4)
                    y[64 * g + l] = dl[2 * g] * np.float32(lo) - ml[2 * g]
                    y[64 * g + 32 + l] = dl[2 * g + 1] * np.float32(hi) - ml[2 * g + 1]


@_jit
def decode_q4_k(src, s, dst, o, n):
    _k4_super_blocks(src, s, B.Q4_K_SIZE, -1, B.Q4_K_QS, dst, o, n)


@_jit
def decode_q5_k(src, s, dst, o, n):
    _k4_super_blocks(src, s, B.Q5_K_SIZE, B.Q5_K_QH, B.Q5_K_QS, dst, o, n)


@_jit
def decode_q6_k(src, s, dst, o, n):
    dl = np.empty(8, np.float32)
    for b in range(n):
        at, to = s + B.Q6_K_SIZE * b, o + QK_K * b
        d = load_f16(src, at + B.Q6_K_D)
        for half in range(2):
            for i in range(8):
                dl[i] = d * np.float32(q6k_scale(src, at, half * 8 + i))
            # plane p: low 4 bits in nibble p//2 of ql[(p%2)*32 + l], high 2 bits in bits 2p of qh[l]
            ql = src[at + B.Q6_K_QL + half * 64:at + B.Q6_K_QL + half * 64 + 64]
            qh = src[at + B.Q6_K_QH + half * 32:at + B.Q6_K_QH + 32 + half * 32]
            y = dst[to + half * 128:to + half * 128 + 128]
            for l in range(16):  # hot loop: 4 planes x 2 sub-blocks
                for p in range(4):
                    a = (p % 2) * 32 + l
                    q1 = ((ql[a] >> (4 * (p // 2))) & 0x0F) | (((qh[l] >> (2 * p)) & 3) << 4)
                    q2 = ((ql[a + 16] >> (4 * (p // 2))) & 0x0F) | (((qh[l + 16] >> (2 * p)) & 3) << 4)
                    y[p * 32 + l] = dl[2 * p] * np.float32(q1 - 32)
                    y[p * 32 + l + 16] = dl[2 * p + 1] * np.float32(q2 - 32)


@_jit
def decode_q8_k(src, s, dst, o, n):  # bsums unused here
    for b in range(n):
        at, to = s + B.Q8_K_SIZE * b, o + QK_K * b
        d = load_f32(src, at + B.Q8_K_D)
        qs = src[at + B.Q8_K_QS:at + B.Q8_K_QS + QK_K]
        y = dst[to:to + QK_K]
        for j in range(QK_K):  # hot loop
            y[j] = d * np.float32(np.int8(qs[j]))


BLOCK_DECODERS = {
    GGMLType.F32: decode_f32, GGMLType.F16: decode_f16, GGMLType.BF16: decode_bf16,
    GGMLType.Q4_0: decode_q4_0, GGMLType.Q4_1: decode_q4_1, GGMLType.Q5_0: decode_q5_0,
    GGMLType.Q5_1: decode_q5_1, GGMLType.Q8_0: decode_q8_0,
    GGMLType.Q2_K: decode_q2_k, GGMLType.Q3_K: decode_q3_k, GGMLType.Q4_K: decode_q4_k,
    GGMLType.Q5_K: decode_q5_k, GGMLType.Q6_K: decode_q6_k, GGMLType.Q8_K: decode_q8_k,
    GGMLType.IQ4_NL: decode_iq4_nl,
}

_MIN_ELEMENTS_PER_THREAD = 1 << 16  # below this a thread costs more than it saves


@functools.cache
def _thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS, thread_name_prefix="llamba-dequant")


def _decode_parallel(decode, src, dst, n_blocks: int, type_size: int, block_size: int):
    """Split the blocks into one contiguous run per thread and decode the runs concurrently."""
    n_threads = max(1, min(numba.get_num_threads(), n_blocks * block_size // _MIN_ELEMENTS_PER_THREAD))
    if n_threads == 1:
        decode(src, 0, dst, 0, n_blocks)
        return
    pool = _thread_pool()
    bounds = np.linspace(0, n_blocks, n_threads + 1).astype(np.int64)
    runs = [pool.submit(decode, src, b0 * type_size, dst, b0 * block_size, b1 - b0)
            for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True)]
    for run in runs:
        run.result()


def dequantize(raw: np.ndarray, qtype, n_cols: int) -> np.ndarray:
    """raw: uint8 (..., row_bytes) GGML rows of n_cols elements -> float32 (..., n_cols)."""
    info = type_info(qtype)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.ndim < 1:
        raise QuantTypeError(f"raw {info.name} data must be uint8 (..., row_bytes), got {raw.dtype} {raw.shape}")
    if n_cols < 0 or raw.shape[-1] != row_bytes(info.type, n_cols):
        raise QuantTypeError(f"{info.name} rows of {n_cols} elements take {row_bytes(info.type, max(n_cols, 0))} "
                             f"bytes, got rows of {raw.shape[-1]}")
    src = np.ascontiguousarray(raw).reshape(-1)  # (n_blocks * type_size,)
    src.flags.writeable = False  # one compiled specialization for memory maps and writable arrays alike
    n_blocks = src.size // info.type_size
    out = np.empty(n_blocks * info.block_size, np.float32)  # (n_blocks * block_size,)
    _decode_parallel(BLOCK_DECODERS[info.type], src, out, n_blocks, info.type_size, info.block_size)
    return out.reshape(*raw.shape[:-1], n_cols)
