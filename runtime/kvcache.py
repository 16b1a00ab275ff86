"""The KV cache: keys and values of every layer, in one of llama.cpp's cache types (--cache-type-k / -v).

  f16   (the default, llama.cpp's) half floats: numpy float16, which the kernels read as their bits (uint16; Numba
        has no float16 on the CPU) and widen as they go (quant.fp16.widen: vcvtph2ps);
  f32   float32;
  q8_0  GGML Q8_0 blocks along head_dim (34 bytes per 32 values: an fp16 scale d and 32 int8 q, value d q), written
        by quant's Q8_0 quantizer (ggml's quantize_row_q8_0_ref, as llama.cpp writes its q8_0 cache).

A layer's cache is (n_head_kv, n_ctx, head_dim), or (n_head_kv, n_ctx, head_dim / 32 * 34) uint8 for q8_0. Whatever
the type, `store` writes positions, `converted` reads them back as float32 (prompt batches), and the decode kernel
takes a chunk of positions at a time through `chunk`.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from quant import GGMLType, dequantize, quantize, row_bytes
from quant.blocks import Q8_0_SIZE, QK
from quant.dequant import decode_q8_0
from quant.quantize import quantize_row_q8_0

from .errors import LlambaError

TYPES = {"f16": 2.0, "f32": 4.0, "q8_0": Q8_0_SIZE / QK}  # name -> bytes per value; f16 is llama.cpp's default
_GGML = {int(GGMLType.F32): "f32", int(GGMLType.F16): "f16", int(GGMLType.Q8_0): "q8_0"}  # llama_cpp.Llama's numbers


def cache_type(kind) -> str:
    """A cache type's name from its name or its GGMLType number as llama_cpp.Llama takes it (0 F32, 1 F16, 8 Q8_0);
    LlambaError for another."""
    if isinstance(kind, (int, np.integer)) and not isinstance(kind, bool):
        kind = _GGML.get(int(kind), kind)
    if kind not in TYPES:
        raise LlambaError(f"unknown or unsupported KV cache type {kind!r}: choose one of {', '.join(TYPES)}")
    return kind


def cache_types(type_k, type_v, head_dim: int, offload: bool = False) -> tuple[str, str]:
    """(type_k, type_v) by name, checked for a model of this head size (q8_0 blocks need a multiple of 32) and, with
    offload, for GPU offload (whose layers keep f16 caches; a session's state joins both parts as floats)."""
    kinds = cache_type(type_k), cache_type(type_v)
    if "q8_0" in kinds and head_dim % QK:
        raise LlambaError(f"a q8_0 KV cache needs a head size that is a multiple of {QK}, this model's is {head_dim}:"
                          " use f16 or f32")
    if "q8_0" in kinds and offload:
        raise LlambaError("a q8_0 KV cache with GPU offload is not supported: use f16 or f32")
    return kinds


def _array(kind: str, shape: tuple, head_dim: int) -> np.ndarray:
    if kind == "q8_0":
        return np.zeros(shape + (row_bytes(GGMLType.Q8_0, head_dim),), np.uint8)
    return np.zeros(shape + (head_dim,), np.float16 if kind == "f16" else np.float32)


class KVCache:
    """Keys and values of every layer for n_ctx positions, k and v (n_layer, n_head_kv, n_ctx, ...) of the types
    type_k, type_v (TYPES); `device`: those of the layers offloaded to a GPU (runtime/gpu), which k and v leave out."""

    def __init__(self, n_layer: int, n_head_kv: int, n_ctx: int, head_dim: int, type_k: str = "f16",
                 type_v: str = "f16"):
        self.type_k, self.type_v = cache_types(type_k, type_v, head_dim)
        self.k = _array(self.type_k, (n_layer, n_head_kv, n_ctx), head_dim)
        self.v = _array(self.type_v, (n_layer, n_head_kv, n_ctx), head_dim)
        self.device = None

    @property
    def n_ctx(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


def store(cache: np.ndarray, pos: int, values: np.ndarray) -> None:
    """values (m, n_kv, head_dim) float32 into a layer's cache (n_kv, n_ctx, ...) at positions pos..pos+m-1, rounded
    to the cache's type (f16: to nearest even, as F16C's vcvtps2ph)."""
    if cache.dtype == np.uint8:
        _store_q8_0(np.ascontiguousarray(values), cache, pos)
    else:
        cache[:, pos:pos + values.shape[0]] = values.transpose(1, 0, 2)


@njit(cache=True, nogil=True)
def _store_q8_0(values, cache, pos):
    for t in range(values.shape[0]):
        for h in range(values.shape[1]):
            quantize_row_q8_0(values[t, h], cache[h, pos + t])


def converted(values: np.ndarray, dtype, head_dim: int) -> np.ndarray:
    """values (..., head_dim) float16 / float32 or (..., row bytes) q8_0 blocks (uint8) as the cache array type dtype,
    as they are when they have it: positions of a layer's cache as float32 for prompt batches, session states moving
    between cache types (widened exactly, rounded to f16 or quantized to q8_0)."""
    if values.dtype == dtype:
        return values
    floats = dequantize(values, GGMLType.Q8_0, head_dim) if values.dtype == np.uint8 else values.astype(np.float32)
    return quantize(floats, GGMLType.Q8_0) if dtype == np.uint8 else floats.astype(dtype)


def kernel_view(cache: np.ndarray) -> np.ndarray:
    """A layer's cache as the kernels take it: f16 as its bits (uint16), the others as they are."""
    return cache.view(np.uint16) if cache.dtype == np.float16 else cache


def chunk(cache, t0, t1):
    """Positions t0..t1-1 of one kv head's kernel_view'd cache (n_ctx, ...) for the decode kernel, whose elements it
    widens with quant.fp16.widen: f32 and f16 as a view, q8_0 dequantized to float32 (t1 - t0, head_dim) (a Numba
    function of the element type: the overloads below)."""


@overload(chunk, inline="always")
def _chunk(cache, t0, t1):
    if cache.dtype == types.uint8:  # q8_0 blocks: value d q, as quant.dequantize computes it
        def q8_0(cache, t0, t1):  # cache C-contiguous: its rows t0..t1-1 are one run of blocks
            n_blocks = cache.shape[1] // Q8_0_SIZE
            out = np.empty((t1 - t0, n_blocks * QK), np.float32)  # (t1 - t0, head_dim)
            decode_q8_0(cache.reshape(-1), t0 * cache.shape[1], out.reshape(-1), 0, (t1 - t0) * n_blocks)
            return out
        return q8_0

    def elements(cache, t0, t1):  # f32, or f16 bits
        return cache[t0:t1]
    return elements
