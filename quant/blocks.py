"""GGML block layouts: the one home of every type's byte offsets, packed scale fields and value tables.

ggml-common.h declares each block as a C struct; the constants below are its field offsets (bytes from the
start of a block), checked against the type registry's block sizes (quant.types) when this module loads.
Everything that reads or writes blocks takes its offsets and unpackers from here: dequantization, the
quantizers, both kernel paths (float: kernels/fused_dot.py; int: kernels/int_dot.py and the LLVM IR of
kernels/simd.py, which vectorizes the same unpackers) and, later, GPU kernels (the helpers are plain Numba
functions of (bytes, offset), so a CUDA device function can be compiled from the same source).

Adding a block type: its offsets (and a value table or scale unpacker if it has one) here, its TypeInfo in
types.py, then a decoder (dequant.py), a row quantizer (quantize.py) and a row dot per kernel path.
"""

import numpy as np
from numba import njit

from .types import TYPES, GGMLType, type_info

jit = njit(cache=True, nogil=True, inline="always")

QK = 32  # elements of the "legacy" blocks (Q4_0 .. Q8_0, IQ4_NL); the K-quants have QK_K = 256

# ---- 32-element blocks: fp16 d first; value at element j from byte qs[j % 16] (nibble j // 16) ----
Q4_0_QS = 2  # d, qs[16]                  value d (q - 8)
Q4_1_M, Q4_1_QS = 2, 4  # d, m, qs[16]    value d q + m
Q5_0_QH, Q5_0_QS = 2, 6  # d, qh[4], qs[16]  value d (q - 16), q = nibble | bit j of u32 qh << 4
Q5_1_M, Q5_1_QH, Q5_1_QS = 2, 4, 8  # d, m, qh[4], qs[16]  value d q + m
Q8_0_QS = 2  # d, qs[32] int8             value d q
IQ4_NL_QS = 2  # d, qs[16]                value d KVALUES_IQ4NL[nibble]

# the 16 int8 levels of IQ4_NL (ggml's kvalues_iq4nl), a non-uniform grid denser near 0
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)

# ---- 256-element super-blocks (K-quants) ----
Q2_K_SCALES, Q2_K_QS, Q2_K_D, Q2_K_DMIN = 0, 16, 80, 82  # scales[16] (4-bit scale | 4-bit min << 4), qs[64]
Q3_K_HMASK, Q3_K_QS, Q3_K_SCALES, Q3_K_D = 0, 32, 96, 108  # hmask[32], qs[64], scales[12] (16 x 6 bit, +32)
Q4_K_D, Q4_K_DMIN, Q4_K_SCALES, Q4_K_QS = 0, 2, 4, 16  # scales[12]: 8 x (6-bit scale, 6-bit min), qs[128]
Q5_K_D, Q5_K_DMIN, Q5_K_SCALES, Q5_K_QH, Q5_K_QS = 0, 2, 4, 16, 48  # as Q4_K plus qh[32] (fifth bits)
Q6_K_QL, Q6_K_QH, Q6_K_SCALES, Q6_K_D = 0, 128, 192, 208  # ql[128], qh[64], scales[16] int8
Q8_K_D, Q8_K_QS, Q8_K_BSUMS = 0, 4, 260  # float32 d, qs[256] int8, int16 bsums[16] (activations only)

# bytes per block, from the registry
Q4_0_SIZE, Q4_1_SIZE, Q5_0_SIZE, Q5_1_SIZE, Q8_0_SIZE, IQ4_NL_SIZE = (
    TYPES[t].type_size for t in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
                                 GGMLType.IQ4_NL))
Q2_K_SIZE, Q3_K_SIZE, Q4_K_SIZE, Q5_K_SIZE, Q6_K_SIZE, Q8_K_SIZE = (
    TYPES[t].type_size for t in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
                                 GGMLType.Q8_K))

# the last field of each block ends where the block does
for _end, _size in [(Q4_0_QS + 16, Q4_0_SIZE), (Q4_1_QS + 16, Q4_1_SIZE), (Q5_0_QS + 16, Q5_0_SIZE),
                    (Q5_1_QS + 16, Q5_1_SIZE), (Q8_0_QS + 32, Q8_0_SIZE), (IQ4_NL_QS + 16, IQ4_NL_SIZE),
                    (Q2_K_DMIN + 2, Q2_K_SIZE), (Q3_K_D + 2, Q3_K_SIZE), (Q4_K_QS + 128, Q4_K_SIZE),
                    (Q5_K_QS + 128, Q5_K_SIZE), (Q6_K_D + 2, Q6_K_SIZE), (Q8_K_BSUMS + 32, Q8_K_SIZE)]:
    assert _end == _size, "a block layout disagrees with quant.types"

# the float fields of each block (fp16 unless noted): a non-finite one makes its whole block non-finite
FLOAT_FIELDS = {
    GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, Q4_1_M), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, Q5_1_M),
    GGMLType.Q8_0: (0,), GGMLType.IQ4_NL: (0,), GGMLType.Q2_K: (Q2_K_D, Q2_K_DMIN), GGMLType.Q3_K: (Q3_K_D,),
    GGMLType.Q4_K: (Q4_K_D, Q4_K_DMIN), GGMLType.Q5_K: (Q5_K_D, Q5_K_DMIN), GGMLType.Q6_K: (Q6_K_D,),
}


def count_nonfinite(raw: np.ndarray, qtype) -> int:
    """How many values (float types) or blocks (their scale fields) of the raw bytes `raw` are NaN or infinite:
    one vectorized pass over the scales only, so a whole model is scanned in about a second."""
    blocks = raw.reshape(-1).view(np.uint8)
    qtype = GGMLType(qtype)
    if qtype in (GGMLType.F32, GGMLType.F16):
        return int(np.count_nonzero(~np.isfinite(blocks.view(np.float32 if qtype == GGMLType.F32 else np.float16))))
    if qtype == GGMLType.BF16:  # exponent all ones
        return int(np.count_nonzero(blocks.view(np.uint16) & 0x7F80 == 0x7F80))
    if qtype not in FLOAT_FIELDS:
        return 0
    blocks = blocks.reshape(-1, TYPES[qtype].type_size)
    bad = np.zeros(len(blocks), bool)
    for o in FLOAT_FIELDS[qtype]:
        bad |= ~np.isfinite(blocks[:, o:o + 2].copy().view(np.float16)[:, 0])
    return int(np.count_nonzero(bad))


# ---- how the kernels walk a row ----

CHUNK = 256  # elements per "block" of the float types F32/F16/BF16 in the float kernels
_SUB_SIZE = {GGMLType.Q2_K: 16, GGMLType.Q3_K: 16, GGMLType.Q6_K: 16}  # elements sharing one scale; others 32


def layout(qtype, n_cols: int) -> tuple[int, int]:
    """(elements per kernel block, elements per sub-block with one scale) of a row of n_cols elements; the float
    types use chunks of up to CHUNK values (a power of two dividing the row)."""
    info = type_info(qtype)
    if info.block_size > 1:
        return info.block_size, _SUB_SIZE.get(info.type, 32)
    chunk = CHUNK
    while n_cols % chunk:
        chunk //= 2
    return chunk, chunk


# ---- packed fields (Numba; inlined into every kernel that reads them) ----

@jit
def scale_min_k4(src, o, j):
    """The 6-bit (scale, min) pair j (0..7) of the 12 packed bytes at src[o:o+12] (Q4_K/Q5_K): pairs 0-3 are the
    low 6 bits of bytes j and j+4; pairs 4-7 take their low 4 bits from byte j+4 and their top 2 bits from the
    top bits of bytes j-4 (scale) and j (min)."""
    if j < 4:
        return np.int64(src[o + j]) & 63, np.int64(src[o + j + 4]) & 63
    a, b, c = np.int64(src[o + j + 4]), np.int64(src[o + j - 4]), np.int64(src[o + j])
    return (a & 0xF) | ((b >> 6) << 4), (a >> 4) | ((c >> 6) << 4)


@jit
def q3k_scale(src, o, s):
    """The signed scale s (0..15) of the 12 packed bytes at src[o:o+12] (Q3_K): low 4 bits in the nibbles of
    bytes 0-7 (s < 8 low nibbles), high 2 bits in bytes 8-11; stored with a +32 bias."""
    lo = np.int64(src[o + s]) & 0xF if s < 8 else np.int64(src[o + s - 8]) >> 4
    hi = (np.int64(src[o + 8 + s % 4]) >> (2 * (s // 4))) & 3
    return (lo | (hi << 4)) - 32


@jit
def q2k_scale_min(src, o, s):
    """The 4-bit (scale, min) of sub-block s (0..15) of a Q2_K block at src[o]."""
    b = np.int64(src[o + Q2_K_SCALES + s])
    return b & 0xF, b >> 4


@jit
def q6k_scale(src, o, s):
    """The int8 scale of sub-block s (0..15) of a Q6_K block at src[o]."""
    return np.int64(np.int8(src[o + Q6_K_SCALES + s]))


# ---- packing (the quantizers' side of the same layouts) ----

@jit
def pack_nibbles(q, y, o):
    """The 32-block nibble layout: y[o+j] = low 4 bits of q[j] | low 4 bits of q[j+16] << 4."""
    for j in range(16):
        y[o + j] = (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)


@jit
def pack_qh32(q, y, o):
    """Bit 4 of q[j] as bit j of the little-endian uint32 at y[o:o+4] (Q5_0/Q5_1)."""
    for k in range(4):
        byte = 0
        for i in range(8):
            byte |= ((q[8 * k + i] >> 4) & 1) << i
        y[o + k] = byte


@jit
def pack_scale_min_k4(ls, lm, y, o):
    """8 six-bit scales ls and mins lm into the 12 bytes at y[o:o+12] (the inverse of scale_min_k4)."""
    for j in range(4):
        y[o + j] = ls[j] | ((ls[j + 4] >> 4) << 6)
        y[o + j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6)
        y[o + j + 8] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4)


@jit
def pack_q3k_scales(ls, y, o):
    """16 six-bit biased scales ls (0..63) into the 12 bytes at y[o:o+12] (the inverse of q3k_scale)."""
    y[o:o + 12] = 0
    for j in range(16):
        l = ls[j]
        if j < 8:
            y[o + j] = l & 0xF
        else:
            y[o + j - 8] |= (l & 0xF) << 4
        y[o + 8 + j % 4] |= (l >> 4) << (2 * (j // 4))
