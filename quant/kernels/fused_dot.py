"""Fused row dots for the float matvec: quants are unpacked inside the FMA loop, never stored.

One compiled function per weight type (dot_q4_k, ...), so LLVM optimizes each loop nest on its own;
`row_dot(code, ...)` picks one per row. A block is walked as "segments" of 16 or 32 consecutive
elements sharing one scale; each segment is one loop  acc[l] += q * (x[xo+l] * f)  (the scale folded
into the activation), vectorized because nothing is stored but acc. Constant biases and sub-block offsets
(value = f q - m) are summed as m * sum(x over the sub-block) (xsum) and subtracted once per row.

Nibbles and 2-bit fields are extracted with float arithmetic (bits k.. of a byte b: floor(b / 2^k) - 2^w floor(b /
2^(k+w)), exact), 8 lanes wide, where Numba's integer shifts and masks run in int64 lanes (4 per AVX2 register);
single high bits (Q5_x, Q3_K) measured faster with integer shifts than with two floors each, so they use those.
"""

import numpy as np
from numba import njit

from .. import blocks as B
from ..blocks import KVALUES_IQ4NL, QK, q2k_scale_min, q3k_scale, q6k_scale, scale_min_k4
from ..fp16 import load_bf16, load_f16, load_u32
from ..types import GGMLType

FAST = {"reassoc", "contract", "nsz", "arcp"}  # vectorizes reductions; keeps inf/NaN semantics
inline = njit(cache=True, nogil=True, inline="always")
row_jit = njit(cache=True, nogil=True, fastmath=FAST)  # one per type: each row dot is its own LLVM function

ACC = 64  # accumulator lanes of the row dots
_IQ4NL_F32 = KVALUES_IQ4NL.astype(np.float32)
_F16, _F4, _F64 = np.float32(16.0), np.float32(4.0), np.float32(64.0)


@inline
def _opaque(n, x):
    """n, hidden from constant folding (n <= len(x) always): a loop of constant trip count 16 is fully
    unrolled before the loop vectorizer runs, and the unrolled form is not vectorized (possible aliasing)."""
    return min(n, x.shape[0])


@inline
def _nibbles(b):
    """(low, high) nibble of the integer-valued float b in 0..255."""
    hi = np.floor(b * np.float32(0.0625))
    return b - _F16 * hi, hi


@inline
def _seg_nibbles(acc, x, xo, flo, fhi, row, qo, n):
    """n bytes of nibble pairs: low nibbles are elements xo + l (scale flo) into acc[:n], high ones xo + n + l
    (scale fhi) into acc[n:2n]."""
    for l in range(_opaque(n, x)):  # hot loop
        lo, hi = _nibbles(np.float32(row[qo + l]))
        acc[l] += lo * (x[xo + l] * flo)
        acc[n + l] += hi * (x[xo + n + l] * fhi)


@inline
def _seg_q5(acc, x, xo, f, row, qo, qh):
    """Q5_0/Q5_1 block: 16 nibble pairs; fifth bits l and 16 + l of the u32 qh (integer shifts measured faster
    here than float bit extraction)."""
    for l in range(_opaque(16, x)):  # hot loop
        lo, hi = _nibbles(np.float32(row[qo + l]))
        acc[l] += (lo + np.float32(16 * ((qh >> l) & 1))) * (x[xo + l] * f)
        acc[16 + l] += (hi + np.float32(16 * ((qh >> (16 + l)) & 1))) * (x[xo + 16 + l] * f)


@inline
def _seg_q5k(acc, x, xo, flo, fhi, row, qo, ho, j):
    """Q5_K chunk j: 32 nibble pairs (sub-blocks 2j, 2j+1) with fifth bits 2j, 2j+1 of qh[l] (integer shifts, as
    in _seg_q5)."""
    for l in range(_opaque(32, x)):  # hot loop
        lo, hi = _nibbles(np.float32(row[qo + l]))
        h = np.int64(row[ho + l]) >> (2 * j)
        acc[l] += (lo + np.float32(16 * (h & 1))) * (x[xo + l] * flo)
        acc[32 + l] += (hi + np.float32(8 * (h & 2))) * (x[xo + 32 + l] * fhi)


@inline
def _acc4(acc, x, xo, l, f0, f1, f2, f3, q0, q1, q2, q3):
    """Lane l of four 16-element segments x[xo + 32k:] with quants qk, scales fk (Q2_K, Q3_K, Q6_K)."""
    acc[l] += q0 * (x[xo + l] * f0)
    acc[16 + l] += q1 * (x[xo + 32 + l] * f1)
    acc[32 + l] += q2 * (x[xo + 64 + l] * f2)
    acc[48 + l] += q3 * (x[xo + 96 + l] * f3)


@inline
def _crumbs(b):
    """The four 2-bit fields of the integer-valued float b in 0..255, low first."""
    b1, b2, b3 = np.floor(b * np.float32(0.25)), np.floor(b * np.float32(0.0625)), np.floor(b / _F64)
    return b - _F4 * b1, b1 - _F4 * b2, b2 - _F4 * b3, b3


@inline
def _seg_q6(acc, x, xo, f0, f1, f2, f3, row, qo, ho):
    """Q6_K: 16 lanes of ql[l], ql[32+l], qh[l] make elements xo + 32k + l, k = 0..3 (scale fk):
    low nibbles then high nibbles, each with two bits of qh (the -32 bias is in the row offset)."""
    for l in range(_opaque(16, x)):  # hot loop
        a_lo, a_hi = _nibbles(np.float32(row[qo + l]))
        b_lo, b_hi = _nibbles(np.float32(row[qo + 32 + l]))
        c0, c1, c2, c3 = _crumbs(np.float32(row[ho + l]))
        _acc4(acc, x, xo, l, f0, f1, f2, f3, a_lo + _F16 * c0, b_lo + _F16 * c1, a_hi + _F16 * c2, b_hi + _F16 * c3)


@inline
def _seg_q2(acc, x, xo, f0, f1, f2, f3, row, qo):
    """Q2_K: the four 2-bit fields k of 16 bytes row[qo+l] are elements xo + 32k + l (scale fk)."""
    for l in range(_opaque(16, x)):  # hot loop
        q0, q1, q2, q3 = _crumbs(np.float32(row[qo + l]))
        _acc4(acc, x, xo, l, f0, f1, f2, f3, q0, q1, q2, q3)


@inline
def _seg_q3(acc, x, xo, f0, f1, f2, f3, row, qo, ho, hs):
    """Q3_K: as Q2_K plus 4 times bit hs + k of row[ho+l] (integer shifts; the -4 bias is in the row offset)."""
    for l in range(_opaque(16, x)):  # hot loop
        q0, q1, q2, q3 = _crumbs(np.float32(row[qo + l]))
        h = np.int64(row[ho + l]) >> hs
        _acc4(acc, x, xo, l, f0, f1, f2, f3, q0 + np.float32(4 * (h & 1)), q1 + np.float32(2 * (h & 2)),
              q2 + np.float32(h & 4), q3 + np.float32((h & 8) >> 1))


@row_jit
def dot_q8_0(row, x, xsum, acc):
    acc[:] = 0.0
    for ib in range(x.shape[0] // QK):
        o = B.Q8_0_SIZE * ib
        f = load_f16(row, o)
        for l in range(_opaque(QK, x)):  # hot loop
            acc[l] += np.float32(np.int8(row[o + B.Q8_0_QS + l])) * (x[QK * ib + l] * f)
    return acc.sum()


@row_jit
def dot_iq4_nl(row, x, xsum, acc):  # value d KVALUES_IQ4NL[nibble]
    acc[:] = 0.0
    for ib in range(x.shape[0] // QK):
        o = B.IQ4_NL_SIZE * ib
        f = load_f16(row, o)
        for l in range(_opaque(16, x)):  # hot loop: two table lookups per byte (unsigned indices: no wraparound)
            b = np.uint64(row[o + B.IQ4_NL_QS + l])
            acc[l] += _IQ4NL_F32[b & np.uint64(15)] * (x[QK * ib + l] * f)
            acc[16 + l] += _IQ4NL_F32[b >> np.uint64(4)] * (x[QK * ib + 16 + l] * f)
    return acc.sum()


@row_jit
def dot_q4_0(row, x, xsum, acc):  # value d (q - 8)
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // QK):
        o = B.Q4_0_SIZE * ib
        d = load_f16(row, o)
        offset += np.float32(8.0) * d * xsum[ib]
        _seg_nibbles(acc, x, QK * ib, d, d, row, o + B.Q4_0_QS, 16)
    return acc.sum() - offset


@row_jit
def dot_q4_1(row, x, xsum, acc):  # value d q + m
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // QK):
        o = B.Q4_1_SIZE * ib
        d = load_f16(row, o)
        offset -= load_f16(row, o + B.Q4_1_M) * xsum[ib]
        _seg_nibbles(acc, x, QK * ib, d, d, row, o + B.Q4_1_QS, 16)
    return acc.sum() - offset


@row_jit
def dot_q5_0(row, x, xsum, acc):  # value d (q - 16)
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // QK):
        o = B.Q5_0_SIZE * ib
        d = load_f16(row, o)
        offset += _F16 * d * xsum[ib]
        _seg_q5(acc, x, QK * ib, d, row, o + B.Q5_0_QS, load_u32(row, o + B.Q5_0_QH))
    return acc.sum() - offset


@row_jit
def dot_q5_1(row, x, xsum, acc):  # value d q + m
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // QK):
        o = B.Q5_1_SIZE * ib
        offset -= load_f16(row, o + B.Q5_1_M) * xsum[ib]
        _seg_q5(acc, x, QK * ib, load_f16(row, o), row, o + B.Q5_1_QS, load_u32(row, o + B.Q5_1_QH))
    return acc.sum() - offset


@inline
def _k4_offset(row, o, xsum, s0):
    """dmin * sum over the 8 sub-blocks of m[s] * xsum[s0 + s] (Q4_K, Q5_K)."""
    total = np.float32(0.0)
    for s in range(8):
        total += np.float32(scale_min_k4(row, o + B.Q4_K_SCALES, s)[1]) * xsum[s0 + s]
    return load_f16(row, o + B.Q4_K_DMIN) * total


@row_jit
def dot_q4_k(row, x, xsum, acc):
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 256):
        o = B.Q4_K_SIZE * ib
        d = load_f16(row, o + B.Q4_K_D)
        offset += _k4_offset(row, o, xsum, 8 * ib)
        for j in range(4):  # chunk j: sub-block 2j in the low nibbles, 2j+1 in the high ones
            f0 = d * np.float32(scale_min_k4(row, o + B.Q4_K_SCALES, 2 * j)[0])
            f1 = d * np.float32(scale_min_k4(row, o + B.Q4_K_SCALES, 2 * j + 1)[0])
            _seg_nibbles(acc, x, 256 * ib + 64 * j, f0, f1, row, o + B.Q4_K_QS + 32 * j, 32)
    return acc.sum() - offset


@row_jit
def dot_q5_k(row, x, xsum, acc):
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 256):
        o = B.Q5_K_SIZE * ib
        d = load_f16(row, o + B.Q5_K_D)
        offset += _k4_offset(row, o, xsum, 8 * ib)
        for j in range(4):
            f0 = d * np.float32(scale_min_k4(row, o + B.Q5_K_SCALES, 2 * j)[0])
            f1 = d * np.float32(scale_min_k4(row, o + B.Q5_K_SCALES, 2 * j + 1)[0])
            _seg_q5k(acc, x, 256 * ib + 64 * j, f0, f1, row, o + B.Q5_K_QS + 32 * j, o + B.Q5_K_QH, j)
    return acc.sum() - offset


@row_jit
def dot_q6_k(row, x, xsum, acc):  # value d sc (q - 32)
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 256):
        o = B.Q6_K_SIZE * ib
        d = load_f16(row, o + B.Q6_K_D)
        for h in range(2):
            for p in range(2):  # sub-blocks s = 8h + 2k + p, k = 0..3
                s = 8 * h + p
                f0, f1 = d * np.float32(q6k_scale(row, o, s)), d * np.float32(q6k_scale(row, o, s + 2))
                f2, f3 = d * np.float32(q6k_scale(row, o, s + 4)), d * np.float32(q6k_scale(row, o, s + 6))
                t = 16 * ib + s
                offset += np.float32(32.0) * (f0 * xsum[t] + f1 * xsum[t + 2] + f2 * xsum[t + 4] + f3 * xsum[t + 6])
                _seg_q6(acc, x, 256 * ib + 128 * h + 16 * p, f0, f1, f2, f3, row, o + B.Q6_K_QL + 64 * h + 16 * p,
                        o + B.Q6_K_QH + 32 * h + 16 * p)
    return acc.sum() - offset


@row_jit
def dot_q2_k(row, x, xsum, acc):  # value d sc q - dmin m
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 256):
        o = B.Q2_K_SIZE * ib
        d, dmin = load_f16(row, o + B.Q2_K_D), load_f16(row, o + B.Q2_K_DMIN)
        for s in range(16):
            offset += dmin * np.float32(q2k_scale_min(row, o, s)[1]) * xsum[16 * ib + s]
        for h in range(2):
            for p in range(2):  # sub-blocks s = 8h + 2k + p, k = 0..3
                s = 8 * h + p
                f0 = d * np.float32(q2k_scale_min(row, o, s)[0])
                f1 = d * np.float32(q2k_scale_min(row, o, s + 2)[0])
                f2 = d * np.float32(q2k_scale_min(row, o, s + 4)[0])
                f3 = d * np.float32(q2k_scale_min(row, o, s + 6)[0])
                qo = o + B.Q2_K_QS + 32 * h + 16 * p
                _seg_q2(acc, x, 256 * ib + 128 * h + 16 * p, f0, f1, f2, f3, row, qo)
    return acc.sum() - offset


@row_jit
def dot_q3_k(row, x, xsum, acc):  # value d sc (q + 4 h - 4)
    acc[:] = 0.0
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 256):
        o = B.Q3_K_SIZE * ib
        d = load_f16(row, o + B.Q3_K_D)
        sc = o + B.Q3_K_SCALES
        for h in range(2):
            for p in range(2):  # sub-blocks s = 8h + 2k + p, k = 0..3; high bit 4h + k of hmask[16p + l]
                s = 8 * h + p
                f0, f1 = d * np.float32(q3k_scale(row, sc, s)), d * np.float32(q3k_scale(row, sc, s + 2))
                f2, f3 = d * np.float32(q3k_scale(row, sc, s + 4)), d * np.float32(q3k_scale(row, sc, s + 6))
                t = 16 * ib + s
                offset += _F4 * (f0 * xsum[t] + f1 * xsum[t + 2] + f2 * xsum[t + 4] + f3 * xsum[t + 6])
                _seg_q3(acc, x, 256 * ib + 128 * h + 16 * p, f0, f1, f2, f3, row, o + B.Q3_K_QS + 32 * h + 16 * p,
                        o + B.Q3_K_HMASK + 16 * p, 4 * h)
    return acc.sum() - offset


@row_jit
def dot_f32(row, x, xsum, acc):
    w = row.view(np.float32)
    total = np.float32(0.0)
    for j in range(x.shape[0]):  # hot loop
        total += w[j] * x[j]
    return total


@row_jit
def dot_f16(row, x, xsum, acc):
    total = np.float32(0.0)
    for j in range(x.shape[0]):  # hot loop
        total += load_f16(row, 2 * j) * x[j]
    return total


@row_jit
def dot_bf16(row, x, xsum, acc):
    total = np.float32(0.0)
    for j in range(x.shape[0]):  # hot loop
        total += load_bf16(row, 2 * j) * x[j]
    return total


@njit(cache=True, nogil=True)
def row_dot(code, row, x, xsum, acc):
    """Dot of one row (row_bytes,) uint8 of GGMLType `code` with x (n_cols,); xsum: x summed per sub-block
    (quant.blocks.layout); acc: float32 scratch (ACC,). The type branch runs once per row."""
    if code == GGMLType.Q4_K:
        return dot_q4_k(row, x, xsum, acc)
    if code == GGMLType.Q6_K:
        return dot_q6_k(row, x, xsum, acc)
    if code == GGMLType.Q8_0:
        return dot_q8_0(row, x, xsum, acc)
    if code == GGMLType.Q5_0:
        return dot_q5_0(row, x, xsum, acc)
    if code == GGMLType.Q4_1:
        return dot_q4_1(row, x, xsum, acc)
    if code == GGMLType.Q4_0:
        return dot_q4_0(row, x, xsum, acc)
    if code == GGMLType.F32:
        return dot_f32(row, x, xsum, acc)
    if code == GGMLType.Q5_1:
        return dot_q5_1(row, x, xsum, acc)
    if code == GGMLType.Q5_K:
        return dot_q5_k(row, x, xsum, acc)
    if code == GGMLType.IQ4_NL:
        return dot_iq4_nl(row, x, xsum, acc)
    if code == GGMLType.Q2_K:
        return dot_q2_k(row, x, xsum, acc)
    if code == GGMLType.Q3_K:
        return dot_q3_k(row, x, xsum, acc)
    if code == GGMLType.F16:
        return dot_f16(row, x, xsum, acc)
    return dot_bf16(row, x, xsum, acc)
