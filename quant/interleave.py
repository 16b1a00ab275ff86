"""Interleaved rows: a matrix's blocks rearranged so that one vector instruction works on 16 rows at once.

GGML stores a matrix row after row; its integer dot ends every block in a horizontal sum. Here (as ggml's repacked
`q4_K_8x8` buffers do for 8 rows) ROWS consecutive rows are a group, and within a group every block's 4-byte words
are transposed: word w of rows 0..15 lie side by side, 64 bytes, one per 32-bit lane. A vpdpbusd of those 64 bytes
against 4 activation bytes broadcast to every lane adds 4 products to each of 16 rows' sums; no lane crosses another.
The fp16 scales of the 16 rows lie side by side too. The bytes are GGML's, moved (and a Q5 block's fifth bits
reordered): a group's block ib is `ROWS * type_size` bytes at ib * ROWS * type_size of the group
(quant.kernels.interleaved reads them).

  Q4_K   d[16] fp16, dmin[16] fp16, then 35 words x 16 rows: the 12 bytes of packed scales and minimums (words 0-2),
         qs (words 3-34: word 3 + 8c + g holds qs[32c + 4g ..], elements 64c + 4g .. low, 64c + 32 + 4g .. high)
  Q6_K   d[16] fp16, then 52 words x 16 rows in the order the kernel reads them (one stream, which the hardware
         prefetchers follow; GGML's order read as three streams measured 16-19 GB/s against 29-32): the scales
         (GGML's words 48-51), then for t = 0..15 ql words 16 (t // 8) + t % 8 and + 8, and qh word 32 + t
  Q8_0, Q4_0, Q4_1, Q5_0, Q5_1   d[16] fp16 (Q4_1, Q5_1: then m[16]), then the words x 16 rows: Q5's fifth bits
         (one word, its bit q + 8 i holding element 4 q + i's, so that a shift, a mask and a shift give quants
         4 q .. 4 q + 3 their fifth bits byte by byte), then qs (word j: elements 4 j .. 4 j + 3, or for nibbles
         elements 4 j .. low and 16 + 4 j .. high)

Matrices whose row count is not a multiple of ROWS, and the other types (IQ4_NL, Q2_K, Q3_K, Q5_K, floats), keep
GGML's layout.
"""

import numpy as np
from numba import njit, prange

from . import blocks as B
from .types import GGMLType, type_info

ROWS = 16
_SCALES = {GGMLType.Q4_K: (B.Q4_K_D, B.Q4_K_DMIN), GGMLType.Q6_K: (B.Q6_K_D,),  # the fp16 fields, first
           GGMLType.Q8_0: (0,), GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, B.Q4_1_M), GGMLType.Q5_0: (0,),
           GGMLType.Q5_1: (0, B.Q5_1_M)}
_WORDS = {GGMLType.Q4_K: (B.Q4_K_SCALES, B.Q4_K_SIZE), GGMLType.Q6_K: (B.Q6_K_QL, B.Q6_K_D),  # word bytes [a, b)
          GGMLType.Q8_0: (B.Q8_0_QS, B.Q8_0_SIZE), GGMLType.Q4_0: (B.Q4_0_QS, B.Q4_0_SIZE),
          GGMLType.Q4_1: (B.Q4_1_QS, B.Q4_1_SIZE), GGMLType.Q5_0: (B.Q5_0_QH, B.Q5_0_SIZE),
          GGMLType.Q5_1: (B.Q5_1_QH, B.Q5_1_SIZE)}
_FIFTH = (GGMLType.Q5_0, GGMLType.Q5_1)  # word 0 holds the fifth bits
_BIT_FROM = np.array([4 * (p % 8) + p // 8 for p in range(32)])  # bit p of the reordered word: GGML's bit _BIT_FROM[p]
_ORDER = {t: np.arange((b - a) // 4) for t, (a, b) in _WORDS.items()}  # word j interleaved: GGML's _ORDER[j]
_ORDER[GGMLType.Q6_K] = np.r_[48:52, [w for t in range(16) for w in (16 * (t // 8) + t % 8, 16 * (t // 8) + t % 8 + 8,
                                                                     32 + t)]]
TYPES = tuple(_SCALES)


def interleavable(qtype, n_rows: int) -> bool:
    return type_info(qtype).type in _SCALES and n_rows % ROWS == 0 and n_rows > 0


def interleave(raw: np.ndarray, qtype) -> np.ndarray:
    """raw (n_rows, row_bytes) uint8 in GGML's layout -> (n_rows // ROWS, ROWS * row_bytes) uint8, one group of
    ROWS rows per row of the result (a new array; groups in parallel)."""
    qtype = type_info(qtype).type
    n_rows, row_bytes = raw.shape
    out = np.empty((n_rows // ROWS, ROWS * row_bytes), np.uint8)
    _interleave(raw, type_info(qtype).type_size, np.array(_SCALES[qtype]), _WORDS[qtype][0],
                _ORDER[qtype].astype(np.int64), qtype in _FIFTH, _BIT_FROM.astype(np.int64), out.view(np.uint32))
    return out


@njit(cache=True, nogil=True, parallel=True)
def _interleave(raw, size, fields, first, order, fifth, bit_from, out):
    """interleave's copy into out (n_groups, ROWS * row_bytes // 4) uint32 words: per group and block, the fp16 fields
    of `fields` side by side (two rows a word), then the words at `first` + 4 order[j] of the ROWS rows, word by word
    (fifth: word 0's bits moved, bit p from bit bit_from[p])."""
    nb = raw.shape[1] // size
    for g in prange(out.shape[0]):
        for ib in range(nb):
            o, src = ib * ROWS * size // 4, ib * size  # o: in words
            for r in range(ROWS):
                row = raw[ROWS * g + r]
                if r % 2 == 0:
                    nxt = raw[ROWS * g + r + 1]
                    for i, f in enumerate(fields):
                        out[g, o + ROWS // 2 * i + r // 2] = _half(row, src + f) | _half(nxt, src + f) << np.uint32(16)
                at = o + ROWS // 2 * len(fields) + r
                for j in range(order.shape[0]):
                    out[g, at + ROWS * j] = _word(row, src + first + 4 * order[j])
                if fifth:
                    word, moved = _word(row, src + first), np.uint32(0)
                    for p in range(32):
                        moved |= ((word >> np.uint32(bit_from[p])) & np.uint32(1)) << np.uint32(p)
                    out[g, at] = moved


@njit(cache=True, nogil=True, inline="always")
def _half(b, at):
    """The little-endian uint16 at bytes at, at + 1 of b, as a uint32."""
    return np.uint32(b[at]) | np.uint32(b[at + 1]) << np.uint32(8)


@njit(cache=True, nogil=True, inline="always")
def _word(b, at):
    """The little-endian uint32 at bytes at..at+3 of b."""
    return _half(b, at) | _half(b, at + 2) << np.uint32(16)


def deinterleave(groups: np.ndarray, qtype, n_cols: int) -> np.ndarray:
    """The inverse of interleave: (n_groups, ROWS * row_bytes) -> (n_rows, row_bytes) in GGML's layout."""
    qtype = type_info(qtype).type
    size = type_info(qtype).type_size
    nb = n_cols // type_info(qtype).block_size
    g = groups.reshape(groups.shape[0], nb, ROWS * size)
    blocks = np.empty((groups.shape[0], nb, ROWS, size), np.uint8)
    at = 0
    for f in _SCALES[qtype]:
        blocks[..., f:f + 2] = g[:, :, at:at + 2 * ROWS].reshape(-1, nb, ROWS, 2)
        at += 2 * ROWS
    a, b = _WORDS[qtype]
    words = np.ascontiguousarray(g[:, :, at:]).view(np.uint32).reshape(-1, nb, (b - a) // 4, ROWS)
    ggml = np.empty_like(words)
    ggml[:, :, _ORDER[qtype]] = words
    if qtype in _FIFTH:
        ggml[:, :, 0] = _move_bits(ggml[:, :, 0], np.argsort(_BIT_FROM))
    blocks[..., a:b] = ggml.transpose(0, 1, 3, 2).copy().view(np.uint8).reshape(-1, nb, ROWS, b - a)
    return blocks.transpose(0, 2, 1, 3).reshape(-1, nb * size)


def _move_bits(words: np.ndarray, src: np.ndarray) -> np.ndarray:
    """uint32 words whose bit p is bit src[p] of the given ones."""
    out = np.zeros_like(words)
    for p, q in enumerate(src):
        out |= ((words >> np.uint32(q)) & np.uint32(1)) << np.uint32(p)
    return out
