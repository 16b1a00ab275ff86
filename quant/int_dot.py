"""Integer row dots (ggml's vec_dot_<type>_q8): one weight row against one Q8-quantized activation row.

Every function takes (w, base, qx, dx, bs, xs): the row's bytes at w[base:base + row_bytes] of a flat uint8
array (so the kernels index the weight matrix without a view per row), qx int8 (n,), dx float32 block scales,
bs int32 sums of qx per 16, xs float32 scaled sums per 32 (Q8_0 activations); it returns the float32 dot.
The 32-element integer dots are the vector intrinsics of simd.py; a block's integer sums (sub-block scales
applied as integers, as ggml does) are scaled by the weight's and the activation's float scales once per
block. Constant offsets (Q4_0's -8, Q6_K's -32 ...) and minimums go through the activation sums:
sum((q - c) x) = sum(q x) - c sum(x).
"""

import numpy as np
from numba import njit

from . import simd
from .fp16 import load_f16
from .kernel_blocks import q3k_scale

jit = njit(cache=True, nogil=True, inline="always")


@jit
def dot_q8_0(row, base, qx, dx, bs, xs):  # d, qs[32] int8
    return simd.dot_row_q8_0(row, base, qx, dx, xs)


@jit
def dot_q4_0(row, base, qx, dx, bs, xs):  # d, qs[16]
    return simd.dot_row_q4_0(row, base, qx, dx, xs)


@jit
def dot_q4_1(row, base, qx, dx, bs, xs):  # d, m, qs[16]
    return simd.dot_row_q4_1(row, base, qx, dx, xs)


@jit
def dot_q5_0(row, base, qx, dx, bs, xs):  # d, qh[4], qs[16]
    return simd.dot_row_q5_0(row, base, qx, dx, xs)


@jit
def dot_q5_1(row, base, qx, dx, bs, xs):  # d, m, qh[4], qs[16]
    return simd.dot_row_q5_1(row, base, qx, dx, xs)


@jit
def dot_q4_k(row, base, qx, dx, bs, xs):  # d, dmin, scales[12], qs[128]
    return simd.dot_row_q4_k(row, base, qx, dx, bs)


@jit
def dot_q5_k(row, base, qx, dx, bs, xs):  # d, dmin, scales[12], qh[32], qs[128]
    return simd.dot_row_q5_k(row, base, qx, dx, bs)


@jit
def dot_q6_k(row, base, qx, dx, bs, xs):  # ql[128], qh[64], scales[16] int8, d; value d sc (q - 32)
    return simd.dot_row_q6_k(row, base, qx, dx, bs)


@jit
def dot_q3_k(row, base, qx, dx, bs, xs):  # hmask[32], qs[64], scales[12] (16 x 6 bit), d; value d sc (q + 4 h - 4)
    total = np.float32(0.0)
    for ib in range(qx.shape[0] // 256):
        o = base + 110 * ib
        isum, offset = 0, 0
        for h in range(2):  # element 128h + 32k + l: bits 2k of qs[32h + l], high bit 4h + k of hmask[l]
            for k in range(4):
                s = 8 * h + 2 * k
                sc0, sc1 = q3k_scale(row, o + 96, s), q3k_scale(row, o + 96, s + 1)
                isum += simd.dot_bytes(row, o + 32 + 32 * h, 2 * k, 3, o, 4 * h + k, 1, 2,
                                  qx, 256 * ib + 128 * h + 32 * k, sc0, sc1)
                offset += sc0 * bs[16 * ib + s] + sc1 * bs[16 * ib + s + 1]
        total += load_f16(row, o + 108) * dx[ib] * np.float32(isum - 4 * offset)
    return total


@jit
def dot_q2_k(row, base, qx, dx, bs, xs):  # scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin
    total = np.float32(0.0)
    for ib in range(qx.shape[0] // 256):
        o = base + 84 * ib
        isum, msum = 0, 0
        for s in range(16):
            msum += (np.int64(row[o + s]) >> 4) * bs[16 * ib + s]
        for h in range(2):  # element 128h + 32k + l: bits 2k of qs[32h + l]
            for k in range(4):
                s = o + 8 * h + 2 * k
                isum += simd.dot_bytes(row, o + 16 + 32 * h, 2 * k, 3, o, 0, 0, 0, qx, 256 * ib + 128 * h + 32 * k,
                                  np.int64(row[s]) & 15, np.int64(row[s + 1]) & 15)
        total += dx[ib] * (load_f16(row, o + 80) * np.float32(isum) - load_f16(row, o + 82) * np.float32(msum))
    return total


@jit
def row_dot(code, row, base, qx, dx, bs, xs):
    """Dot of the row at row[base:] of GGMLType `code` with one Q8 activation row; the type branch runs once per
    row."""
    if code == 12:
        return dot_q4_k(row, base, qx, dx, bs, xs)
    if code == 14:
        return dot_q6_k(row, base, qx, dx, bs, xs)
    if code == 8:
        return dot_q8_0(row, base, qx, dx, bs, xs)
    if code == 6:
        return dot_q5_0(row, base, qx, dx, bs, xs)
    if code == 3:
        return dot_q4_1(row, base, qx, dx, bs, xs)
    if code == 2:
        return dot_q4_0(row, base, qx, dx, bs, xs)
    if code == 7:
        return dot_q5_1(row, base, qx, dx, bs, xs)
    if code == 13:
        return dot_q5_k(row, base, qx, dx, bs, xs)
    if code == 10:
        return dot_q2_k(row, base, qx, dx, bs, xs)
    return dot_q3_k(row, base, qx, dx, bs, xs)
