"""Block decoders for the matvec/matmul kernels: one block -> its integer quants and sub-block scales.

Every weight type is written as  value[j] = sc[s] * q[j] - mn[s],  s = j // SUB  where q holds small
integers (stored as float32, exact) and sc/mn are the sub-block scale and offset. The float kernels
fold sc into the activation; the integer kernels dot q against a Q8-quantized activation exactly and
apply sc/mn after, as ggml does. Float types (F32/F16/BF16) are chunks of up to CHUNK values (the length
of q, a power of two dividing the row) with sc=1, mn=0.

Everything here is inlined into the caller (a row-level kernel): a call per block that passes arrays
costs ~100 ns of reference counting. All decoders share one signature:
(row uint8 (row_bytes,), ib block index, q (BLOCK,), sc (NSUB,), mn (NSUB,)).
`decode_block(code, ...)` dispatches on the GGMLType id inside Numba.
"""

import numpy as np
from numba import njit

from .fp16 import load_bf16, load_f16, load_f32
from .types import GGMLType, type_info

CHUNK = 256  # elements per "block" of the float types
MAX_SUB = 16  # most sub-blocks per block (Q2_K, Q3_K, Q6_K: 16 of 16)

_SUB_SIZE = {GGMLType.Q2_K: 16, GGMLType.Q3_K: 16, GGMLType.Q6_K: 16}  # the others: 32


def layout(qtype, n_cols: int) -> tuple[int, int]:
    """(elements per kernel block, elements per sub-block) of a row of n_cols elements of a weight type."""
    info = type_info(qtype)
    if info.block_size > 1:
        return info.block_size, _SUB_SIZE.get(info.type, 32)
    chunk = CHUNK
    while n_cols % chunk:
        chunk //= 2
    return chunk, chunk


jit = njit(cache=True, nogil=True, inline="always")


@jit
def _nibble_pairs(row, o, q, bias):
    """q[l] = low nibble - bias, q[16+l] = high nibble - bias of row[o+l], l < 16 (the 32-block layout).

    Unpacked with float arithmetic (hi = floor(b/16), lo = b - 16 hi): 8-wide, faster than integer ops in Numba.
    """
    for l in range(16):
        b = np.float32(row[o + l])
        hi = np.floor(b * np.float32(1.0 / 16.0))
        q[l] = b - np.float32(16.0) * hi - bias
        q[16 + l] = hi - bias


@jit
def _fifth_bits(row, o, q):
    """Add 16 to q[j] where bit j of the little-endian u32 at row[o:o+4] is set (Q5_0/Q5_1)."""
    qh = np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16) | (np.int64(row[o + 3]) << 24)
    for j in range(32):
        q[j] += np.float32(16 * ((qh >> j) & 1))


@jit
def _dec_f32(row, ib, q, sc, mn):
    o = ib * q.shape[0] * 4
    for j in range(q.shape[0]):
        q[j] = load_f32(row, o + 4 * j)
    sc[0] = 1.0
    mn[0] = 0.0


@jit
def _dec_f16(row, ib, q, sc, mn):
    o = ib * q.shape[0] * 2
    for j in range(q.shape[0]):
        q[j] = load_f16(row, o + 2 * j)
    sc[0] = 1.0
    mn[0] = 0.0


@jit
def _dec_bf16(row, ib, q, sc, mn):
    o = ib * q.shape[0] * 2
    for j in range(q.shape[0]):
        q[j] = load_bf16(row, o + 2 * j)
    sc[0] = 1.0
    mn[0] = 0.0


@jit
def _dec_q4_0(row, ib, q, sc, mn):  # d, qs[16]
    o = ib * 18
    d = load_f16(row, o)
    _nibble_pairs(row, o + 2, q, np.float32(8.0))
    sc[0] = d
    mn[0] = 0.0


@jit
def _dec_q4_1(row, ib, q, sc, mn):  # d, m, qs[16]
    o = ib * 20
    _nibble_pairs(row, o + 4, q, np.float32(0.0))
    sc[0] = load_f16(row, o)
    mn[0] = -load_f16(row, o + 2)


@jit
def _dec_q5_0(row, ib, q, sc, mn):  # d, qh[4], qs[16]
    o = ib * 22
    d = load_f16(row, o)
    _nibble_pairs(row, o + 6, q, np.float32(16.0))
    _fifth_bits(row, o + 2, q)
    sc[0] = d
    mn[0] = 0.0


@jit
def _dec_q5_1(row, ib, q, sc, mn):  # d, m, qh[4], qs[16]
    o = ib * 24
    _nibble_pairs(row, o + 8, q, np.float32(0.0))
    _fifth_bits(row, o + 4, q)
    sc[0] = load_f16(row, o)
    mn[0] = -load_f16(row, o + 2)


@jit
def _dec_q8_0(row, ib, q, sc, mn):  # d, qs[32] int8
    o = ib * 34
    for j in range(32):
        q[j] = np.float32(np.int8(row[o + 2 + j]))
    sc[0] = load_f16(row, o)
    mn[0] = 0.0


@jit
def _dec_q2_k(row, ib, q, sc, mn):  # scales[16], qs[64], d, dmin
    o = ib * 84
    d = load_f16(row, o + 80)
    dmin = load_f16(row, o + 82)
    for s in range(16):  # elements 16s..16s+15: half h, shift pair j, part p
        h, j, p = s // 8, (s // 2) % 4, s % 2
        src = o + 16 + 32 * h + 16 * p
        for l in range(16):
            q[16 * s + l] = np.float32((np.int64(row[src + l]) >> (2 * j)) & 3)
        b = np.int64(row[o + s])
        sc[s] = d * np.float32(b & 0xF)
        mn[s] = dmin * np.float32(b >> 4)


@jit
def _dec_q3_k(row, ib, q, sc, mn):  # hmask[32], qs[64], scales[12] (16 x 6 bit), d
    o = ib * 110
    d = load_f16(row, o + 108)
    for s in range(16):
        h, j, p = s // 8, (s // 2) % 4, s % 2
        src = o + 32 + 32 * h + 16 * p
        hm = o + 16 * p
        bit = 4 * h + j
        for l in range(16):
            qs = (np.int64(row[src + l]) >> (2 * j)) & 3
            q[16 * s + l] = np.float32(qs - 4 * (1 - ((np.int64(row[hm + l]) >> bit) & 1)))
        sc[s] = d * np.float32(q3k_scale(row, o + 96, s))
        mn[s] = 0.0


@jit
def q3k_scale(row, o, s):
    """The signed 6-bit scale s (0..15) of the 12-byte Q3_K scales at row[o:o+12]."""
    lo = np.int64(row[o + s]) & 0xF if s < 8 else np.int64(row[o + s - 8]) >> 4
    hi = (np.int64(row[o + 8 + s % 4]) >> (2 * (s // 4))) & 3
    return (lo | (hi << 4)) - 32


@jit
def scale_min_k4(row, o, j):
    """The 6-bit (scale, min) pair j of the 12-byte Q4_K/Q5_K scales at row[o:o+12]."""
    if j < 4:
        return np.int64(row[o + j]) & 63, np.int64(row[o + j + 4]) & 63
    a, b, c = np.int64(row[o + j + 4]), np.int64(row[o + j - 4]), np.int64(row[o + j])
    return (a & 0xF) | ((b >> 6) << 4), (a >> 4) | ((c >> 6) << 4)


@jit
def _k4_scales(row, o, sc, mn):
    d = load_f16(row, o)
    dmin = load_f16(row, o + 2)
    for s in range(8):
        a, m = scale_min_k4(row, o + 4, s)
        sc[s] = d * np.float32(a)
        mn[s] = dmin * np.float32(m)


@jit
def _dec_q4_k(row, ib, q, sc, mn):  # d, dmin, scales[12], qs[128]
    o = ib * 144
    _k4_scales(row, o, sc, mn)
    for j in range(4):  # 64 elements per qs chunk of 32 bytes: low nibbles, then high nibbles
        src = o + 16 + 32 * j
        for l in range(32):
            b = np.float32(row[src + l])
            hi = np.floor(b * np.float32(1.0 / 16.0))
            q[64 * j + l] = b - np.float32(16.0) * hi
            q[64 * j + 32 + l] = hi


@jit
def _dec_q5_k(row, ib, q, sc, mn):  # d, dmin, scales[12], qh[32], qs[128]
    o = ib * 176
    _k4_scales(row, o, sc, mn)
    for j in range(4):
        src = o + 48 + 32 * j
        for l in range(32):
            b = np.int64(row[src + l])
            h = np.int64(row[o + 16 + l]) >> (2 * j)
            q[64 * j + l] = np.float32((b & 0xF) | ((h & 1) << 4))
            q[64 * j + 32 + l] = np.float32((b >> 4) | ((h & 2) << 3))


@jit
def _dec_q6_k(row, ib, q, sc, mn):  # ql[128], qh[64], scales[16] int8, d
    o = ib * 210
    d = load_f16(row, o + 208)
    for h in range(2):
        ql = o + 64 * h
        qh = o + 128 + 32 * h
        base = 128 * h
        for l in range(32):
            a = np.int64(row[ql + l])
            b = np.int64(row[ql + 32 + l])
            c = np.int64(row[qh + l])
            q[base + l] = np.float32((a & 0xF) | ((c & 3) << 4)) - np.float32(32.0)
            q[base + 32 + l] = np.float32((b & 0xF) | (((c >> 2) & 3) << 4)) - np.float32(32.0)
            q[base + 64 + l] = np.float32((a >> 4) | (((c >> 4) & 3) << 4)) - np.float32(32.0)
            q[base + 96 + l] = np.float32((b >> 4) | (((c >> 6) & 3) << 4)) - np.float32(32.0)
    for s in range(16):
        sc[s] = d * np.float32(np.int8(row[o + 192 + s]))
        mn[s] = 0.0


@jit
def decode_block(code, row, ib, q, sc, mn):
    """Decode block ib of a row of GGMLType `code` into q (BLOCK,), sc (NSUB,), mn (NSUB,)."""
    if code == 8:
        _dec_q8_0(row, ib, q, sc, mn)
    elif code == 12:
        _dec_q4_k(row, ib, q, sc, mn)
    elif code == 14:
        _dec_q6_k(row, ib, q, sc, mn)
    elif code == 6:
        _dec_q5_0(row, ib, q, sc, mn)
    elif code == 2:
        _dec_q4_0(row, ib, q, sc, mn)
    elif code == 3:
        _dec_q4_1(row, ib, q, sc, mn)
    elif code == 7:
        _dec_q5_1(row, ib, q, sc, mn)
    elif code == 13:
        _dec_q5_k(row, ib, q, sc, mn)
    elif code == 11:
        _dec_q3_k(row, ib, q, sc, mn)
    elif code == 10:
        _dec_q2_k(row, ib, q, sc, mn)
    elif code == 0:
        _dec_f32(row, ib, q, sc, mn)
    elif code == 1:
        _dec_f16(row, ib, q, sc, mn)
    elif code == 30:
        _dec_bf16(row, ib, q, sc, mn)

