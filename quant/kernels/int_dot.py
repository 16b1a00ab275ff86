"""Integer row dots (ggml's vec_dot_<type>_q8): one weight row against one Q8-quantized activation row.

Every function takes (w, base, qx, dx, bs, xs): the row's bytes at w[base:base + row_bytes] of a flat uint8
array (so the kernels index the weight matrix without a view per row), qx int8 (n,), dx float32 block scales,
bs int32 sums of qx per 16, xs float32 scaled sums per 32 (Q8_0 activations); it returns the float32 dot.
The 32-element integer dots are the vector intrinsics of simd.py; a block's integer sums (sub-block scales
applied as integers, as ggml does) are scaled by the weight's and the activation's float scales once per
block. Constant offsets (Q4_0's -8, Q6_K's -32 ...) go through the integer sums of x, sum((q - c) x) =
sum(q x) - c sum(x), where the instructions want unsigned quants; minimums through the scaled sums xs.
"""

import numpy as np
from numba import njit

from .. import blocks as B
from ..blocks import q2k_scale_min, q3k_scale
from ..fp16 import load_f16
from ..types import GGMLType
from . import interleaved, simd

jit = njit(cache=True, nogil=True, inline="always")


@jit
def dot_q3_k(row, base, qx, dx, bs, xs):  # value d sc (q + 4 h - 4)
    total = np.float32(0.0)
    for ib in range(qx.shape[0] // 256):
        o = base + B.Q3_K_SIZE * ib
        isum, offset = 0, 0
        for h in range(2):  # element 128h + 32k + l: bits 2k of qs[32h + l], high bit 4h + k of hmask[l]
            for k in range(4):
                s = 8 * h + 2 * k
                sc0, sc1 = q3k_scale(row, o + B.Q3_K_SCALES, s), q3k_scale(row, o + B.Q3_K_SCALES, s + 1)
                isum += simd.dot_bytes(row, o + B.Q3_K_QS + 32 * h, 2 * k, 3, o + B.Q3_K_HMASK, 4 * h + k, 1, 2,
                                       qx, 256 * ib + 128 * h + 32 * k, sc0, sc1)
                offset += sc0 * bs[16 * ib + s] + sc1 * bs[16 * ib + s + 1]
        total += load_f16(row, o + B.Q3_K_D) * dx[ib] * np.float32(isum - 4 * offset)
    return total


@jit
def dot_q2_k(row, base, qx, dx, bs, xs):  # value d sc q - dmin m
    total = np.float32(0.0)
    for ib in range(qx.shape[0] // 256):
        o = base + B.Q2_K_SIZE * ib
        isum, msum = 0, 0
        for s in range(16):
            msum += q2k_scale_min(row, o, s)[1] * bs[16 * ib + s]
        for h in range(2):  # element 128h + 32k + l: bits 2k of qs[32h + l]
            for k in range(4):
                s = 8 * h + 2 * k
                isum += simd.dot_bytes(row, o + B.Q2_K_QS + 32 * h, 2 * k, 3, o, 0, 0, 0, qx,
                                       256 * ib + 128 * h + 32 * k, q2k_scale_min(row, o, s)[0],
                                       q2k_scale_min(row, o, s + 1)[0])
        total += dx[ib] * (load_f16(row, o + B.Q2_K_D) * np.float32(isum)
                           - load_f16(row, o + B.Q2_K_DMIN) * np.float32(msum))
    return total


@njit(cache=True, nogil=True)
def slow_rows(code, w, rb, r0, r1, qx, dx, bs, xs, out):
    """out[:, r0:r1] = the rows r0..r1-1 of Q2_K or Q3_K (no intrinsics) at w[r * rb:] against every token. Its own
    function, called once per task: inlined beside the other types' dots, these two made the product kernel's compile
    ~4x longer; called per row from the hot loops, they slowed the other types' (a call in a loop keeps LLVM from
    hoisting its loads)."""
    for r in range(r0, r1):
        for k in range(qx.shape[0]):
            if code == GGMLType.Q2_K:
                out[k, r] = dot_q2_k(w, r * rb, qx[k], dx[k], bs[k], xs[k])
            else:
                out[k, r] = dot_q3_k(w, r * rb, qx[k], dx[k], bs[k], xs[k])


@jit
def row_dot(code, row, base, qx, dx, bs, xs):
    """Dot of the row at row[base:] of GGMLType `code` with one Q8 activation row; the type branch runs once per
    row. The 32-block types and Q4_K..Q6_K are whole-row intrinsics of simd.py (Q2_K and Q3_K: slow_rows)."""
    if code == GGMLType.Q4_K:
        return simd.dot_row_q4_k(row, base, qx, dx, bs)
    if code == GGMLType.Q6_K:
        return simd.dot_row_q6_k(row, base, qx, dx, bs)
    if code == GGMLType.Q8_0:
        return simd.dot_row_q8_0(row, base, qx, dx, bs)
    if code == GGMLType.Q5_0:
        return simd.dot_row_q5_0(row, base, qx, dx, bs)
    if code == GGMLType.Q4_1:
        return simd.dot_row_q4_1(row, base, qx, dx, xs)
    if code == GGMLType.Q4_0:
        return simd.dot_row_q4_0(row, base, qx, dx, bs)
    if code == GGMLType.Q5_1:
        return simd.dot_row_q5_1(row, base, qx, dx, xs)
    if code == GGMLType.Q5_K:
        return simd.dot_row_q5_k(row, base, qx, dx, bs)
    return simd.dot_row_iq4_nl(row, base, qx, dx, bs)


@jit
def row_dots(code, row, base, qx, dx, bs, xs, ks, out, r):
    """out[k, r] = the dot of the row at row[base:] with activation row k of the (n_tok, ...) arrays, for the tokens
    k of the tuple ks (its length is compiled in): each weight block is unpacked once for all of them, and every
    result is the same bits as row_dot's."""
    if code == GGMLType.Q4_K:
        return simd.dot_rows_q4_k(row, base, qx, dx, bs, ks, out, r)
    if code == GGMLType.Q6_K:
        return simd.dot_rows_q6_k(row, base, qx, dx, bs, ks, out, r)
    if code == GGMLType.Q8_0:
        return simd.dot_rows_q8_0(row, base, qx, dx, bs, ks, out, r)
    if code == GGMLType.Q5_0:
        return simd.dot_rows_q5_0(row, base, qx, dx, bs, ks, out, r)
    if code == GGMLType.Q4_1:
        return simd.dot_rows_q4_1(row, base, qx, dx, xs, ks, out, r)
    if code == GGMLType.Q4_0:
        return simd.dot_rows_q4_0(row, base, qx, dx, bs, ks, out, r)
    if code == GGMLType.Q5_1:
        return simd.dot_rows_q5_1(row, base, qx, dx, xs, ks, out, r)
    if code == GGMLType.Q5_K:
        return simd.dot_rows_q5_k(row, base, qx, dx, bs, ks, out, r)
    simd.dot_rows_iq4_nl(row, base, qx, dx, bs, ks, out, r)


@jit
def _group_shared(code, w, base, qx, dx, bs, xs, ks, out, r):
    """The 16-row intrinsic of Q6_K, Q5_0 or Q5_1 for the tokens of the tuple ks (one unpacking for them all)."""
    if code == GGMLType.Q6_K:
        interleaved.dots_q6_k(w, base, qx, dx, bs, ks, out, r)
    elif code == GGMLType.Q5_0:
        interleaved.dots_q5_0(w, base, qx, dx, bs, ks, out, r)
    else:
        interleaved.dots_q5_1(w, base, qx, dx, xs, ks, out, r)


@jit
def _group_one(code, w, base, qx, dx, bs, xs, k, out, r):
    """The 16-row intrinsic of `code` for token k alone."""
    if code == GGMLType.Q4_K:
        interleaved.dots_q4_k(w, base, qx, dx, bs, (k,), out, r)
    elif code == GGMLType.Q8_0:
        interleaved.dots_q8_0(w, base, qx, dx, bs, (k,), out, r)
    elif code == GGMLType.Q4_0:
        interleaved.dots_q4_0(w, base, qx, dx, bs, (k,), out, r)
    elif code == GGMLType.Q4_1:
        interleaved.dots_q4_1(w, base, qx, dx, xs, (k,), out, r)
    else:
        _group_shared(code, w, base, qx, dx, bs, xs, (k,), out, r)


@jit
def group_dots(code, w, base, qx, dx, bs, xs, out, r):
    """out[:, r:r + 16] = the dots of the 16 interleaved rows at w[base:] (quant.interleave) of GGMLType `code` with
    every token of the (n_tok, ...) activation arrays. Types whose unpacking is a mask or two (Q4_K, Q8_0, Q4_0, Q4_1)
    one token per call (measured fastest: unpacking is cheap next to the vpdpbusd, and the group stays in L1 for the
    next token); the 5- and 6-bit types four (their unpacking shared: 64 tokens of Qwen2.5-1.5B's Q6_K ffn_down
    9.0 -> 6.1 ms). A token's outputs are the same bits in any call."""
    n_tok, k = qx.shape[0], 0
    if code == GGMLType.Q6_K or code == GGMLType.Q5_0 or code == GGMLType.Q5_1:
        while k + 4 <= n_tok:
            _group_shared(code, w, base, qx, dx, bs, xs, (k, k + 1, k + 2, k + 3), out, r)
            k += 4
        if k + 2 <= n_tok:
            _group_shared(code, w, base, qx, dx, bs, xs, (k, k + 1), out, r)
            k += 2
    for j in range(k, n_tok):
        _group_one(code, w, base, qx, dx, bs, xs, j, out, r)
