"""fp16 / bf16 inside Numba kernels: bit-exact loads from raw little-endian bytes, and float32 -> half rounding.

Numba has no float16 on the CPU, so half floats are decoded from their bits (subnormals, infinities
and NaN payloads included) and reinterpreted with bitcast intrinsics. The same functions compile for CUDA
(quant/kernels/cuda: the GPU's f16 KV cache and block scales).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def bits_as_f32(typingctx, bits):
    """Reinterpret the 32 bits of a uint32 as a float32 (no conversion)."""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _f32_bits(typingctx, f):
    """The 32 bits of a float32 as a uint32 (no conversion); unlike a scalar `.view`, it compiles for CUDA too."""
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def widen(typingctx, x):
    """x as float32: a float32 as it is; a uint16 as the fp16 whose bits it holds, by the CPU's conversion
    (vcvtph2ps with F16C: exact, NaN payloads quieted). The element of an f32 or an f16 KV cache (runtime.layers)."""
    if x == types.float32:
        return types.float32(x), lambda context, builder, signature, args: args[0]
    if x != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(x), codegen


@njit(cache=True, nogil=True, inline="always")
def half_to_float(h):
    """fp16 bit pattern (an integer 0..0xFFFF) -> float32, exact for every value."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    em = h & 0x7FFF  # exponent and mantissa
    # normal: rebias the exponent (127 - 15 = 112); inf / NaN: all-ones exponent, payload kept
    bits = (em << 13) | 0x7F800000 if em >= 0x7C00 else (em << 13) + (112 << 23)
    f = bits_as_f32(np.uint32(sign | bits))
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
    return bits_as_f32(np.uint32(np.int64(h) << 16))


@njit(cache=True, nogil=True, inline="always")
def load_bf16(src, i):
    """The bfloat16 stored little-endian at src[i:i+2] as float32."""
    return bfloat_to_float(np.int64(src[i]) | (np.int64(src[i + 1]) << 8))


@njit(cache=True, nogil=True, inline="always")
def load_u32(src, i):
    """The little-endian uint32 at src[i:i+4], as int64."""
    return np.int64(src[i]) | (np.int64(src[i + 1]) << 8) | (np.int64(src[i + 2]) << 16) | (np.int64(src[i + 3]) << 24)


@njit(cache=True, nogil=True, inline="always")
def load_f32(src, i):
    """The float32 stored little-endian at src[i:i+4]."""
    return bits_as_f32(np.uint32(load_u32(src, i)))


@njit(cache=True, nogil=True)
def float_to_half(f):
    """float32 -> fp16 bit pattern, round to nearest even; NaN keeps its top payload bits (as numpy)."""
    b = np.int64(_f32_bits(np.float32(f)))
    sign = (b >> 16) & 0x8000
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    if e == 0xFF:  # inf / NaN
        h = 0x7C00 | (m >> 13)
        return sign | (h + 1 if m != 0 and h == 0x7C00 else h)
    if e >= 143:  # |f| >= 65536
        return sign | 0x7C00
    if e >= 113:  # normal half; a carry out of the mantissa bumps the exponent (up to inf)
        h = ((e - 112) << 10) | (m >> 13)
        rest = m & 0x1FFF
        if rest > 0x1000 or (rest == 0x1000 and (h & 1)):
            h += 1
        return sign | h
    if e < 102:  # below half the smallest subnormal (2**-25): zero
        return sign
    mant = m | 0x800000  # subnormal half: value = mant * 2**(e - 150), unit 2**-24
    shift = 126 - e
    h = mant >> shift
    rest = mant & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and (h & 1)):
        h += 1
    return sign | h


@njit(cache=True, nogil=True)
def float_to_bf16(f):
    """float32 -> bfloat16 bit pattern, round to nearest even; NaN forced quiet (ggml_compute_fp32_to_bf16)."""
    n = np.int64(_f32_bits(np.float32(f)))
    if (n & 0x7FFFFFFF) > 0x7F800000:
        return ((n >> 16) & 0xFFFF) | 64
    return (n + 0x7FFF + ((n >> 16) & 1)) >> 16
