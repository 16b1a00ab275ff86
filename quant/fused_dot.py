"""Fused row dots for the float matvec: quants are unpacked inside the FMA loop, never stored.

A block is walked as "segments" of 16 or 32 consecutive elements sharing one scale, whose quants are
bit fields of consecutive bytes:  q = ((row[qo+l] >> qs) & qm) | (((row[ho+l] >> hs) & hm) << hp) - bias.
Each segment is one loop  acc[l] += q * (x[xo+l] * f)  (the scale folded into the activation); LLVM
vectorizes it only when nothing is stored but acc, which is why kernel_blocks' decode-to-scratch form
is not used here. Sub-block offsets (value = f q - m) are summed as m * sum(x over the segment).
Everything is inlined into the per-type row function built by kernels_float.kernels().
"""

import numpy as np
from numba import njit

from .fp16 import load_bf16, load_f16, load_f32
from .kernel_blocks import q3k_scale, scale_min_k4

jit = njit(cache=True, nogil=True, inline="always")


@jit
def _opaque(n, x):
    """n, hidden from constant folding (n <= len(x) always): a loop of constant trip count 16 is fully
    unrolled before the loop vectorizer runs, and the unrolled form is not vectorized (possible aliasing)."""
    return min(n, x.shape[0])


@jit
def _seg(acc, x, xo, f, row, qo, qs, qm, ho, hs, hm, hp, bias, n):
    for l in range(_opaque(n, x)):  # hot loop
        q = ((np.int32(row[qo + l]) >> qs) & qm) | (((np.int32(row[ho + l]) >> hs) & hm) << hp)
        acc[l] += np.float32(q - bias) * (x[xo + l] * f)


@jit
def _seg_nibbles(acc, x, xlo, xhi, flo, fhi, row, qo, bias, n):
    """n bytes of nibble pairs: low nibbles times x[xlo:] (scale flo) into acc[:n], high ones times x[xhi:]
    (scale fhi) into acc[n:2n]. Unpacked with float arithmetic (hi = floor(b/16)): 8-wide, where integer
    shifts and masks run in Numba's 64-bit lanes."""
    for l in range(_opaque(n, x)):  # hot loop
        b = np.float32(row[qo + l])
        hi = np.floor(b * np.float32(0.0625))
        acc[l] += (b - np.float32(16.0) * hi - bias) * (x[xlo + l] * flo)
        acc[n + l] += (hi - bias) * (x[xhi + l] * fhi)


@jit
def _seg_qh32(acc, x, xo, f, row, qo, qs, qh, hs, bias):
    """Q5_0/Q5_1 half block: 16 nibbles, fifth bits hs..hs+15 of the u32 qh."""
    for l in range(_opaque(16, x)):  # hot loop
        q = ((np.int32(row[qo + l]) >> qs) & 15) | (((qh >> (hs + l)) & 1) << 4)
        acc[l] += np.float32(q - bias) * (x[xo + l] * f)


@jit
def _seg_i8(acc, x, xo, f, row, qo):
    for l in range(32):  # hot loop
        acc[l] += np.float32(np.int8(row[qo + l])) * (x[xo + l] * f)


@jit
def _u32(row, o):
    return np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16) | (np.int64(row[o + 3]) << 24)


@jit
def _dot_32block(code, row, x, xsum, acc):
    """Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32 elements per block); returns the offset sum."""
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 32):
        xo = 32 * ib
        if code == 8:  # d, qs[32] int8
            o = 34 * ib
            _seg_i8(acc, x, xo, load_f16(row, o), row, o + 2)
        elif code == 2 or code == 3:  # Q4_0: d, qs[16]; Q4_1: d, m, qs[16]
            o = (18 if code == 2 else 20) * ib
            qo = o + (2 if code == 2 else 4)
            d = load_f16(row, o)
            _seg_nibbles(acc, x, xo, xo + 16, d, d, row, qo, np.float32(8.0 if code == 2 else 0.0), 16)
            if code == 3:
                offset -= load_f16(row, o + 2) * xsum[ib]
        else:  # Q5_0: d, qh[4], qs[16]; Q5_1: d, m, qh[4], qs[16]
            o = (22 if code == 6 else 24) * ib
            hq = o + (2 if code == 6 else 4)
            bias = 16 if code == 6 else 0
            d = load_f16(row, o)
            qh = _u32(row, hq)
            _seg_qh32(acc, x, xo, d, row, hq + 4, 0, qh, 0, bias)
            _seg_qh32(acc, x, xo + 16, d, row, hq + 4, 4, qh, 16, bias)
            if code == 7:
                offset -= load_f16(row, o + 2) * xsum[ib]
    return offset


@jit
def _dot_kquant(code, row, x, xsum, acc):
    """Q2_K .. Q6_K (256 elements per block); xsum holds sums over 16 (Q2/Q3/Q6) or 32 (Q4/Q5) elements."""
    offset = np.float32(0.0)
    for ib in range(x.shape[0] // 256):
        xb = 256 * ib
        if code == 12 or code == 13:  # Q4_K: d, dmin, scales[12], qs[128]; Q5_K: + qh[32] before qs
            o = (144 if code == 12 else 176) * ib
            d, dmin = load_f16(row, o), load_f16(row, o + 2)
            for s in range(8):
                sc, m = scale_min_k4(row, o + 4, s)
                offset += dmin * np.float32(m) * xsum[8 * ib + s]
                if code == 13:  # sub-block s: bytes of chunk s // 2, low or high nibbles, fifth bit s of qh
                    _seg(acc, x, xb + 32 * s, d * np.float32(sc), row, o + 48 + 32 * (s // 2), 4 * (s % 2), 15,
                         o + 16, s, 1, 4, 0, 32)
            if code == 12:  # chunk j: sub-block 2j in the low nibbles, 2j+1 in the high ones
                for j in range(4):
                    sc0, _ = scale_min_k4(row, o + 4, 2 * j)
                    sc1, _ = scale_min_k4(row, o + 4, 2 * j + 1)
                    _seg_nibbles(acc, x, xb + 64 * j, xb + 64 * j + 32, d * np.float32(sc0), d * np.float32(sc1),
                                 row, o + 16 + 32 * j, np.float32(0.0), 32)
        elif code == 14:  # ql[128], qh[64], scales[16] int8, d
            o = 210 * ib
            d = load_f16(row, o + 208)
            for s in range(16):  # 16 elements: half h, quarter k (nibble and qh bit pair), part p
                h, k, p = s // 8, (s // 2) % 4, s % 2
                f = d * np.float32(np.int8(row[o + 192 + s]))
                _seg(acc, x, xb + 16 * s, f, row, o + 64 * h + 32 * (k % 2) + 16 * p, 4 * (k // 2), 15,
                     o + 128 + 32 * h + 16 * p, 2 * k, 3, 4, 32, 16)
        else:  # Q2_K: scales[16], qs[64], d, dmin; Q3_K: hmask[32], qs[64], scales[12], d
            o = (84 if code == 10 else 110) * ib
            qbase = o + (16 if code == 10 else 32)
            d = load_f16(row, o + (80 if code == 10 else 108))
            for s in range(16):  # 16 elements: half h, bit pair j, part p
                h, j, p = s // 8, (s // 2) % 4, s % 2
                qo = qbase + 32 * h + 16 * p
                if code == 10:
                    b = np.int64(row[o + s])
                    _seg(acc, x, xb + 16 * s, d * np.float32(b & 15), row, qo, 2 * j, 3, qo, 0, 0, 0, 0, 16)
                    offset += load_f16(row, o + 82) * np.float32(b >> 4) * xsum[16 * ib + s]
                else:
                    f = d * np.float32(q3k_scale(row, o + 96, s))
                    _seg(acc, x, xb + 16 * s, f, row, qo, 2 * j, 3, o + 16 * p, 4 * h + j, 1, 2, 4, 16)
    return offset


@jit
def _dot_float(code, row, x, acc):
    """F32, F16, BF16, in 32-element segments (any row length)."""
    n = x.shape[0]
    for i in range(0, n, 32):
        for l in range(min(32, n - i)):  # hot loop
            j = i + l
            if code == 0:
                w = load_f32(row, 4 * j)
            elif code == 1:
                w = load_f16(row, 2 * j)
            else:
                w = load_bf16(row, 2 * j)
            acc[l] += w * x[j]


@jit
def row_dot(code, row, x, xsum, acc):
    """Dot of one quantized row of GGMLType `code` with x (n_cols,); acc: float32 scratch (64,)."""
    acc[:] = 0.0
    offset = np.float32(0.0)
    if code == 0 or code == 1 or code == 30:
        _dot_float(code, row, x, acc)
    elif code >= 10:
        offset = _dot_kquant(code, row, x, xsum, acc)
    else:
        offset = _dot_32block(code, row, x, xsum, acc)
    return acc.sum() - offset
