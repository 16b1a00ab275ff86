"""Bit-exact loads of fp16 / bf16 / fp32 values from raw little-endian bytes inside Numba kernels.

Numba has no float16 on the CPU, so half floats are decoded from their bits (subnormals, infinities
and NaN payloads included) and reinterpreted with a bitcast intrinsic.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _bits_as_f32(typingctx, bits):
    """Reinterpret the 32 bits of a uint32 as a float32 (no conversion)."""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@njit(cache=True, nogil=True, inline="always")
def half_to_float(h):
    """fp16 bit pattern (an integer 0..0xFFFF) -> float32, exact for every value."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    em = h & 0x7FFF  # exponent and mantissa
    # normal: rebias the exponent (127 - 15 = 112); inf / NaN: all-ones exponent, payload kept
    bits = (em << 13) | 0x7F800000 if em >= 0x7C00 else (em << 13) + (112 << 23)
    f = _bits_as_f32(np.uint32(sign | bits))
    sub = np.float32(em) * np.float32(2.0**-24)  # zero / subnormal: exact in float32
    if em < 0x0400:
        f = -sub if sign else sub
    return f  # selects rather than branches, for loops over many halves


@njit(cache=True, nogil=True, inline="always")
def load_f16(src, i):
    """The fp16 stored little-endian at src[i:i+2] (uint8 array) as float32."""
    return half_to_float(np.int64(src[i]) | (np.int64(src[i + 1]) << 8))


@njit(cache=True, nogil=True, inline="always")
def bfloat_to_float(h):
    """bfloat16 bit pattern (an integer 0..0xFFFF) -> float32: its bits are the top half of an fp32."""
    return _bits_as_f32(np.uint32(np.int64(h) << 16))


@njit(cache=True, nogil=True, inline="always")
def load_bf16(src, i):
    """The bfloat16 stored little-endian at src[i:i+2] as float32."""
    return bfloat_to_float(np.int64(src[i]) | (np.int64(src[i + 1]) << 8))


@njit(cache=True, nogil=True, inline="always")
def load_f32(src, i):
    """The float32 stored little-endian at src[i:i+4]."""
    bits = np.int64(src[i]) | (np.int64(src[i + 1]) << 8) | (np.int64(src[i + 2]) << 16) | (np.int64(src[i + 3]) << 24)
    return _bits_as_f32(np.uint32(bits))
