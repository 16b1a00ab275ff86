"""Element quads: the values of elements 4j..4j+3 of one GGML block, one small decoder per type.

The GPU kernels (quant/kernels/cuda) read weights through these: a thread decodes one quad (four consecutive
elements sharing one scale) and multiplies it with four consecutive activations, so the 32 lanes of a warp read
neighbouring bytes. They are plain Numba functions of (bytes, block offset, quad): numba-cuda compiles them as
device functions, the CPU compiles them as njit functions (the tests check them there against gguf.quants).
Offsets and scale unpackers come from quant.blocks; products are taken in ggml's order (scale times quant, then
the offset), so a quad is bit-exact with `dequantize_row_*`.

quad(src, at, j) -> four float32: src uint8 (1-D), at the block's first byte, j in 0..block_size/4 - 1. The
float types are read as blocks of 4 elements (QUAD_BLOCKS gives every type's (elements, bytes) per block).
"""

import numpy as np
from numba import njit

from . import blocks as B
from .blocks import KVALUES_IQ4NL, q2k_scale_min, q3k_scale, q6k_scale, scale_min_k4
from .fp16 import load_bf16, load_f16, load_f32, load_u32
from .types import TYPES, GGMLType

jit = njit(cache=True, nogil=True, inline="always")


# ---- the pieces: four quants from four consecutive bytes, and their values ----

@jit
def bits4(src, o, shift, mask):
    """(src[o + i] >> shift) & mask for i = 0..3: quants packed at the same bits of four consecutive bytes."""
    return ((np.int64(src[o]) >> shift) & mask, (np.int64(src[o + 1]) >> shift) & mask,
            (np.int64(src[o + 2]) >> shift) & mask, (np.int64(src[o + 3]) >> shift) & mask)


@jit
def join4(lo, hi, weight):
    """lo_i + weight * hi_i: high bits stored apart (Q5_x, Q3_K, Q5_K, Q6_K) joined to the low ones."""
    return lo[0] + weight * hi[0], lo[1] + weight * hi[1], lo[2] + weight * hi[2], lo[3] + weight * hi[3]


@jit
def values4(q, zero, d, m):
    """d * (q_i - zero) + m as float32 (ggml's order: scale times quant, then the offset)."""
    return (d * np.float32(q[0] - zero) + m, d * np.float32(q[1] - zero) + m,
            d * np.float32(q[2] - zero) + m, d * np.float32(q[3] - zero) + m)


@jit
def _nibbles(src, qs, j):
    """The four nibbles of quad j (0..7) of a 32-block's qs[16] at src[qs]: low nibbles first, then high ones."""
    return bits4(src, qs + 4 * (j % 4), 4 * (j // 4), 15)


@jit
def _qh_bits(qh, j):
    """Bits 4j..4j+3 of the 32-bit word qh (the fifth bits of quad j of a Q5_0/Q5_1 block)."""
    return (qh >> (4 * j)) & 1, (qh >> (4 * j + 1)) & 1, (qh >> (4 * j + 2)) & 1, (qh >> (4 * j + 3)) & 1


_ZERO = np.float32(0.0)


# ---- one decoder per type ----

@jit
def quad_f32(src, at, j):
    return load_f32(src, at), load_f32(src, at + 4), load_f32(src, at + 8), load_f32(src, at + 12)


@jit
def quad_f16(src, at, j):
    return load_f16(src, at), load_f16(src, at + 2), load_f16(src, at + 4), load_f16(src, at + 6)


@jit
def quad_bf16(src, at, j):
    return load_bf16(src, at), load_bf16(src, at + 2), load_bf16(src, at + 4), load_bf16(src, at + 6)


@jit
def quad_q4_0(src, at, j):
    return values4(_nibbles(src, at + B.Q4_0_QS, j), 8, load_f16(src, at), _ZERO)


@jit
def quad_q4_1(src, at, j):
    return values4(_nibbles(src, at + B.Q4_1_QS, j), 0, load_f16(src, at), load_f16(src, at + B.Q4_1_M))


@jit
def quad_q5_0(src, at, j):
    q = join4(_nibbles(src, at + B.Q5_0_QS, j), _qh_bits(load_u32(src, at + B.Q5_0_QH), j), 16)
    return values4(q, 16, load_f16(src, at), _ZERO)


@jit
def quad_q5_1(src, at, j):
    q = join4(_nibbles(src, at + B.Q5_1_QS, j), _qh_bits(load_u32(src, at + B.Q5_1_QH), j), 16)
    return values4(q, 0, load_f16(src, at), load_f16(src, at + B.Q5_1_M))


@jit
def quad_q8_0(src, at, j):
    o = at + B.Q8_0_QS + 4 * j
    q = (np.int64(np.int8(src[o])), np.int64(np.int8(src[o + 1])), np.int64(np.int8(src[o + 2])),
         np.int64(np.int8(src[o + 3])))
    return values4(q, 0, load_f16(src, at), _ZERO)


@jit
def quad_iq4_nl(src, at, j):
    q = _nibbles(src, at + B.IQ4_NL_QS, j)
    levels = (KVALUES_IQ4NL[q[0]], KVALUES_IQ4NL[q[1]], KVALUES_IQ4NL[q[2]], KVALUES_IQ4NL[q[3]])
    return values4(levels, 0, load_f16(src, at), _ZERO)


# Q2_K, Q3_K, Q6_K: quad j lies in half j // 32 (128 elements), plane (j // 8) % 4 (bits 2p.. of 32 bytes),
# bytes 4 (j % 8)..+3 of that half's 32; its scale is that of sub-block j // 4 (16 elements).

@jit
def quad_q2_k(src, at, j):
    sc, mn = q2k_scale_min(src, at, j // 4)
    q = bits4(src, at + B.Q2_K_QS + 32 * (j // 32) + 4 * (j % 8), 2 * ((j // 8) % 4), 3)
    return values4(q, 0, load_f16(src, at + B.Q2_K_D) * np.float32(sc),
                   -(load_f16(src, at + B.Q2_K_DMIN) * np.float32(mn)))


@jit
def quad_q3_k(src, at, j):
    l0 = 4 * (j % 8)  # high bit of element 128 half + 32 p + l: bit 4 half + p of hmask[l]
    q = join4(bits4(src, at + B.Q3_K_QS + 32 * (j // 32) + l0, 2 * ((j // 8) % 4), 3),
              bits4(src, at + B.Q3_K_HMASK + l0, j // 8, 1), 4)
    return values4(q, 4, load_f16(src, at + B.Q3_K_D) * np.float32(q3k_scale(src, at + B.Q3_K_SCALES, j // 4)),
                   _ZERO)


@jit
def quad_q6_k(src, at, j):
    half, p, l0 = j // 32, (j // 8) % 4, 4 * (j % 8)  # low 4 bits: nibble p // 2 of ql[(p % 2) 32 + l]
    q = join4(bits4(src, at + B.Q6_K_QL + 64 * half + 32 * (p % 2) + l0, 4 * (p // 2), 15),
              bits4(src, at + B.Q6_K_QH + 32 * half + l0, 2 * p, 3), 16)
    return values4(q, 32, load_f16(src, at + B.Q6_K_D) * np.float32(q6k_scale(src, at, j // 4)), _ZERO)


# Q4_K, Q5_K: quad j lies in byte group j // 16 (32 bytes of qs, 64 elements), nibble (j // 8) % 2, bytes
# 4 (j % 8)..+3 of the group; sub-block j // 8 (32 elements) has one 6-bit scale and min; Q5_K's fifth bit of
# element 32 s + l is bit s of qh[l].

@jit
def _k4(src, at, j, q):
    sc, mn = scale_min_k4(src, at + B.Q4_K_SCALES, j // 8)
    return values4(q, 0, load_f16(src, at + B.Q4_K_D) * np.float32(sc),
                   -(load_f16(src, at + B.Q4_K_DMIN) * np.float32(mn)))


@jit
def quad_q4_k(src, at, j):
    return _k4(src, at, j, bits4(src, at + B.Q4_K_QS + 32 * (j // 16) + 4 * (j % 8), 4 * ((j // 8) % 2), 15))


@jit
def quad_q5_k(src, at, j):
    l0 = 4 * (j % 8)
    q = join4(bits4(src, at + B.Q5_K_QS + 32 * (j // 16) + l0, 4 * ((j // 8) % 2), 15),
              bits4(src, at + B.Q5_K_QH + l0, j // 8, 1), 16)
    return _k4(src, at, j, q)


QUADS = {
    GGMLType.F32: quad_f32, GGMLType.F16: quad_f16, GGMLType.BF16: quad_bf16,
    GGMLType.Q4_0: quad_q4_0, GGMLType.Q4_1: quad_q4_1, GGMLType.Q5_0: quad_q5_0, GGMLType.Q5_1: quad_q5_1,
    GGMLType.Q8_0: quad_q8_0, GGMLType.IQ4_NL: quad_iq4_nl,
    GGMLType.Q2_K: quad_q2_k, GGMLType.Q3_K: quad_q3_k, GGMLType.Q4_K: quad_q4_k, GGMLType.Q5_K: quad_q5_k,
    GGMLType.Q6_K: quad_q6_k,
}

# (elements, bytes) of a block as the quads walk a row: the float types in blocks of 4 elements
QUAD_BLOCKS = {t: (4, 4 * TYPES[t].type_size) if TYPES[t].block_size == 1 else
               (TYPES[t].block_size, TYPES[t].type_size) for t in QUADS}
