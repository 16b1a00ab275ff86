"""Quantize float32 rows to raw GGML blocks with Numba: every storage type, one parallel driver.

Row quantizers share one signature, `quantize_row_xxx(x, y)`: x float32 (n_cols,), y uint8 (row_bytes,).
Other kernels reuse them (`quantize_row_q8_0` / `quantize_row_q8_k` quantize matvec activations).

- F16, BF16 and the 32-blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) round exactly like `gguf.quants`: every
  multiply and add is a separate float32 operation (no fused multiply-add), fp16 rounds to nearest even,
  so the bytes are equal. ggml built with FMA contraction can differ from both in Q4_0/Q5_0 (see tests).
- The K-quants follow ggml's reference quantizers `quantize_row_q{2,3,4,5,6}_K_ref`: a weighted
  least-squares search for each sub-block's scale (and min), the sub-block scales quantized to 4/6/8 bits
  under an fp16 super-block scale, then every value re-quantized against the scales as stored.
"""

import numpy as np
from numba import njit, prange

from .fp16 import half_to_float
from .types import QK_K, GGMLType, QuantTypeError, row_bytes, type_info

# error_model="numpy": a float division by zero gives inf/nan instead of raising (all are guarded anyway)
_jit = njit(cache=True, nogil=True, error_model="numpy")
_f32 = np.float32
GROUP_MAX_EPS = np.float32(1e-15)  # ggml: a sub-block with |x| below this is all zero


# ---- scalar helpers ----

@_jit
def float_to_half(f):
    """float32 -> fp16 bit pattern, round to nearest even; NaN keeps its top payload bits (as numpy)."""
    b = np.int64(np.float32(f).view(np.uint32))
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


@_jit
def float_to_bf16(f):
    """float32 -> bfloat16 bit pattern, round to nearest even; NaN forced quiet (ggml_compute_fp32_to_bf16)."""
    n = np.int64(np.float32(f).view(np.uint32))
    if (n & 0x7FFFFFFF) > 0x7F800000:
        return ((n >> 16) & 0xFFFF) | 64
    return (n + 0x7FFF + ((n >> 16) & 1)) >> 16


@_jit
def _put_u16(y, o, v):
    y[o] = v & 0xFF
    y[o + 1] = (v >> 8) & 0xFF


@_jit
def _put_f16(y, o, f):
    """Store f as fp16 at y[o:o+2] and return the stored value as float32 (what a decoder reads)."""
    h = float_to_half(f)
    _put_u16(y, o, h)
    return half_to_float(h)


@_jit
def _nearest_int(f):
    """ggml's nearest_int: float32 to the nearest integer, ties to even (|f| < 2**22), via the 1.5*2**23 trick."""
    bits = np.int64(np.float32(np.float32(f) + np.float32(12582912.0)).view(np.uint32))
    return (bits & 0x7FFFFF) - 0x400000


@_jit
def _roundf(v):
    """C roundf: nearest integer, halves away from zero (v - trunc(v) is exact in float32)."""
    r = int(v)
    frac = v - np.float32(r)
    if frac >= 0.5:
        return r + 1
    if frac <= -0.5:
        return r - 1
    return r


@_jit
def _absmax_signed(x):
    """The element of x with the largest magnitude, the first on ties (as numpy argmax and ggml pick it)."""
    amax = abs(x[0])
    mx = x[0]
    for v in x[1:]:
        if abs(v) > amax:
            amax = abs(v)
            mx = v
    return mx


# ---- float types ----

@_jit
def quantize_row_f16(x, y):
    for j in range(x.size):
        _put_u16(y, 2 * j, float_to_half(x[j]))


@_jit
def quantize_row_bf16(x, y):
    for j in range(x.size):
        _put_u16(y, 2 * j, float_to_bf16(x[j]))


# ---- 32-blocks ----

@_jit
def _quants_sym(x, q, half):
    """Q4_0/Q5_0 codes q in [0, 2*half) of one block: d = max/-half, q = trunc(x/d + half + 0.5). Returns d."""
    d = _absmax_signed(x) / _f32(-half)
    inv = _f32(1.0) / d if d != 0 else _f32(0.0)
    bias = _f32(half + 0.5)
    for j in range(32):
        q[j] = min(2 * half - 1, int(x[j] * inv + bias))  # separate mul and add: no FMA, as gguf.quants
    return d


@_jit
def _quants_asym(x, q, nmax):
    """Q4_1/Q5_1 codes q in [0, nmax] of one block: d = (max-min)/nmax, q = trunc((x-min)/d + 0.5). Returns d, min."""
    mn = x[0]
    mx = x[0]
    for v in x[1:]:
        mn = min(mn, v)
        mx = max(mx, v)
    d = (mx - mn) / _f32(nmax)
    inv = _f32(1.0) / d if d != 0 else _f32(0.0)
    for j in range(32):
        q[j] = min(nmax, int((x[j] - mn) * inv + _f32(0.5)))
    return d, mn


@_jit
def _pack_nibbles(q, y, o):
    """y[o+j] = low 4 bits of q[j] | low 4 bits of q[j+16] << 4 (the 32-block nibble layout)."""
    for j in range(16):
        y[o + j] = (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)


@_jit
def _pack_qh32(q, y, o):
    """Bit 4 of q[j] as bit j of the little-endian uint32 at y[o:o+4] (Q5_0/Q5_1)."""
    for k in range(4):
        byte = 0
        for i in range(8):
            byte |= ((q[8 * k + i] >> 4) & 1) << i
        y[o + k] = byte


@_jit
def quantize_row_q4_0(x, y):
    q = np.empty(32, np.int32)
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[18 * b:18 * b + 18]
        _put_f16(yb, 0, _quants_sym(xb, q, 8))
        _pack_nibbles(q, yb, 2)


@_jit
def quantize_row_q5_0(x, y):
    q = np.empty(32, np.int32)
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[22 * b:22 * b + 22]
        _put_f16(yb, 0, _quants_sym(xb, q, 16))
        _pack_qh32(q, yb, 2)
        _pack_nibbles(q, yb, 6)


@_jit
def quantize_row_q4_1(x, y):
    q = np.empty(32, np.int32)
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[20 * b:20 * b + 20]
        d, mn = _quants_asym(xb, q, 15)
        _put_f16(yb, 0, d)
        _put_f16(yb, 2, mn)
        _pack_nibbles(q, yb, 4)


@_jit
def quantize_row_q5_1(x, y):
    q = np.empty(32, np.int32)
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[24 * b:24 * b + 24]
        d, mn = _quants_asym(xb, q, 31)
        _put_f16(yb, 0, d)
        _put_f16(yb, 2, mn)
        _pack_qh32(q, yb, 4)
        _pack_nibbles(q, yb, 8)


@_jit
def quantize_row_q8_0(x, y):
    """Q8_0 (ggml quantize_row_q8_0_ref): d = amax/127 (fp16), qs = roundf(x/d). Also the activation format."""
    for b in range(x.size // 32):
        xb, yb = x[32 * b:32 * b + 32], y[34 * b:34 * b + 34]
        amax = _f32(0.0)
        for v in xb:
            amax = max(amax, abs(v))
        d = amax / _f32(127.0)
        inv = _f32(1.0) / d if d != 0 else _f32(0.0)
        _put_f16(yb, 0, d)
        for j in range(32):
            yb[2 + j] = _roundf(xb[j] * inv) & 0xFF


# ---- K-quant helpers (ggml-quants.c: make_qx_quants, make_q3_quants, make_qkx2_quants) ----

@_jit
def _qx_sums(x, iscale, nmax, L, write):
    """Weighted (w = x^2) sums of l*x and l*l for l = clamp(round(iscale*x), -nmax, nmax-1); L = l + nmax if write."""
    sumlx = _f32(0.0)
    suml2 = _f32(0.0)
    for i in range(x.size):
        l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
        if write:
            L[i] = l + nmax
        w = x[i] * x[i]
        fl = _f32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    return sumlx, suml2


@_jit
def _make_qx_quants(x, nmax, L):
    """Symmetric scale for codes L in [0, 2*nmax): try 19 scales near max/-nmax, keep the best weighted fit."""
    mx = _absmax_signed(x)
    if abs(mx) < GROUP_MAX_EPS:
        L[:] = 0
        return _f32(0.0)
    sumlx, suml2 = _qx_sums(x, _f32(-nmax) / mx, nmax, L, True)
    scale = sumlx / suml2 if suml2 != 0 else _f32(0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(_f32(nmax) + _f32(0.1) * _f32(step)) / mx
        sumlx, suml2 = _qx_sums(x, iscale, nmax, L, False)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            _qx_sums(x, iscale, nmax, L, True)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@_jit
def _make_q3_quants(x, nmax, L):
    """Symmetric scale for codes L in [0, 2*nmax): round at max/-nmax, then up to 5 passes of
    per-element code changes that improve the x^2-weighted least-squares fit."""
    mx = _absmax_signed(x)
    if abs(mx) < GROUP_MAX_EPS:
        L[:] = 0
        return _f32(0.0)
    iscale = _f32(-nmax) / mx
    sumlx = _f32(0.0)
    suml2 = _f32(0.0)
    for i in range(x.size):
        l = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        sumlx += w * x[i] * _f32(l)
        suml2 += w * _f32(l) * _f32(l)
    for _ in range(5):
        n_changed = 0
        for i in range(x.size):
            w = x[i] * x[i]
            li = _f32(L[i])
            slx = sumlx - w * x[i] * li
            if slx > 0:
                sl2 = suml2 - w * li * li
                new_l = max(-nmax, min(nmax - 1, _nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * _f32(new_l)
                    sl2 += w * _f32(new_l) * _f32(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(x.size):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else _f32(0.0)


@_jit
def _affine_codes(x, w, iscale, mn, nmax, L):
    """L = clamp(round(iscale*(x - mn)), 0, nmax); returns the weighted sums (sum w*l, sum w*l^2, sum w*l*x)."""
    sum_l = _f32(0.0)
    sum_l2 = _f32(0.0)
    sum_xl = _f32(0.0)
    for i in range(x.size):
        l = max(0, min(nmax, _nearest_int(iscale * (x[i] - mn))))
        L[i] = l
        fl = _f32(l)
        sum_l += w[i] * fl
        sum_l2 += w[i] * fl * fl
        sum_xl += w[i] * fl * x[i]
    return sum_l, sum_l2, sum_xl


@_jit
def _affine_error(x, w, scale, mn, L, use_mad):
    err = _f32(0.0)
    for i in range(x.size):
        diff = scale * _f32(L[i]) + mn - x[i]
        err += w[i] * (abs(diff) if use_mad else diff * diff)
    return err


@_jit
def _make_qkx2_quants(x, w, nmax, L, Laux, rmin, rdelta, nstep, use_mad):
    """Affine fit x ~ scale*L - the_min with codes L in [0, nmax], min <= 0: for nstep+1 trial scales
    solve the weighted least-squares (scale, min) for the rounded codes; keep the lowest error.
    Returns (scale, the_min) with the_min >= 0."""
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, x.size):
        mn = min(mn, x[i])
        mx = max(mx, x[i])
        sum_w += w[i]
        sum_x += w[i] * x[i]
    mn = min(mn, _f32(0.0))
    if mx == mn:
        L[:] = 0
        return _f32(0.0), -mn
    iscale = _f32(nmax) / (mx - mn)
    scale = _f32(1.0) / iscale
    _affine_codes(x, w, iscale, mn, nmax, L)
    best_error = _affine_error(x, w, scale, mn, L, use_mad)
    for step in range(nstep + 1):
        iscale = (_f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)) / (mx - mn)
        sum_l, sum_l2, sum_xl = _affine_codes(x, w, iscale, mn, nmax, Laux)
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = _f32(0.0)
                this_scale = sum_xl / sum_l2
            cur_error = _affine_error(x, w, this_scale, this_min, Laux, use_mad)
            if cur_error < best_error:
                L[:] = Laux
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@_jit
def _requant_affine(x, d, dm, nmax, L):
    """L = clamp(round((x + dm)/d), 0, nmax): the codes against the sub-block scale/min as stored."""
    for i in range(x.size):
        L[i] = max(0, min(nmax, _nearest_int((x[i] + dm) / d)))


@_jit
def _requant_sym(x, d, nmax, L):
    """L = clamp(round(x/d), -nmax, nmax-1) + nmax."""
    for i in range(x.size):
        L[i] = max(-nmax, min(nmax - 1, _nearest_int(x[i] / d))) + nmax


@_jit
def _pack_2bit(L, y, o):
    """Q2_K/Q3_K low bits: per 128 values, byte l holds L[l], L[l+32], L[l+64], L[l+96] at bits 0, 2, 4, 6."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[o + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)) & 0xFF


# ---- K-quant blocks (256 values) ----

@_jit
def _block_q2_k(x, y, L, Laux, w, scales, mins):
    """Block layout: scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin."""
    max_scale = _f32(0.0)
    max_min = _f32(0.0)
    for j in range(16):
        xs = x[16 * j:16 * j + 16]
        for l in range(16):
            w[l] = abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(xs, w, 3, L[16 * j:16 * j + 16], Laux, -0.5, 0.1, 15, True)
        max_scale = max(max_scale, scales[j])
        max_min = max(max_min, mins[j])
    y[0:16] = 0
    d = _f32(0.0)
    dmin = _f32(0.0)
    if max_scale > 0:
        iscale = _f32(15.0) / max_scale
        for j in range(16):
            y[j] = _nearest_int(iscale * scales[j]) & 0xFF
        d = max_scale / _f32(15.0)
    if max_min > 0:
        iscale = _f32(15.0) / max_min
        for j in range(16):
            y[j] |= (_nearest_int(iscale * mins[j]) << 4) & 0xFF
        dmin = max_min / _f32(15.0)
    d = _put_f16(y, 80, d)
    dmin = _put_f16(y, 82, dmin)
    for j in range(16):
        dl = d * _f32(y[j] & 0xF)
        if dl != 0:
            _requant_affine(x[16 * j:16 * j + 16], dl, dmin * _f32(y[j] >> 4), 3, L[16 * j:16 * j + 16])
    _pack_2bit(L, y, 16)


@_jit
def _block_q3_k(x, y, L, scales):
    """Block layout: hmask[32] (bit 2 of each code), qs[64] (low 2 bits), scales[12] (16 x 6-bit, +32), d."""
    max_scale = _f32(0.0)
    amax = _f32(0.0)
    for j in range(16):
        scales[j] = _make_q3_quants(x[16 * j:16 * j + 16], 4, L[16 * j:16 * j + 16])
        if abs(scales[j]) > amax:
            amax = abs(scales[j])
            max_scale = scales[j]
    sc = y[96:108]
    sc[:] = 0
    d = _f32(0.0)
    if max_scale != 0:
        iscale = _f32(-32.0) / max_scale
        for j in range(16):
            l = max(-32, min(31, _nearest_int(iscale * scales[j]))) + 32
            if j < 8:
                sc[j] = l & 0xF
            else:
                sc[j - 8] |= (l & 0xF) << 4
            sc[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
        d = _f32(1.0) / iscale
    d = _put_f16(y, 108, d)
    for j in range(16):
        lo = np.int64(sc[j] & 0xF) if j < 8 else np.int64(sc[j - 8] >> 4)
        s = (lo | (((sc[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
        dl = d * _f32(s)
        if dl != 0:
            _requant_sym(x[16 * j:16 * j + 16], dl, 4, L[16 * j:16 * j + 16])
    y[0:32] = 0
    for j in range(QK_K):  # the high bit of value j goes to hmask[j % 32], bit j // 32
        if L[j] > 3:
            y[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    _pack_2bit(L, y, 32)


@_jit
def _block_q45_k(x, y, nmax, rmin, nstep, L, Laux, w, scales, mins, Ls, Lm):
    """Q4_K (nmax 15) / Q5_K (nmax 31) scales and codes L: writes d, dmin and the 12 packed 6-bit
    scales/mins (y[0:16]); the caller packs L."""
    max_scale = _f32(0.0)
    max_min = _f32(0.0)
    for j in range(8):
        xs = x[32 * j:32 * j + 32]
        sum_x2 = _f32(0.0)
        for v in xs:
            sum_x2 += v * v
        av_x = np.sqrt(sum_x2 / _f32(32.0))
        for l in range(32):
            w[l] = av_x + abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(xs, w, nmax, L[32 * j:32 * j + 32], Laux, rmin, 0.1, nstep, False)
        max_scale = max(max_scale, scales[j])
        max_min = max(max_min, mins[j])
    inv_scale = _f32(63.0) / max_scale if max_scale > 0 else _f32(0.0)
    inv_min = _f32(63.0) / max_min if max_min > 0 else _f32(0.0)
    for j in range(8):
        Ls[j] = min(63, _nearest_int(inv_scale * scales[j]) & 0xFF)
        Lm[j] = min(63, _nearest_int(inv_min * mins[j]) & 0xFF)
    sc = y[4:16]  # 0-3: scale j | (scale j+4 >> 4) << 6; 4-7: min j | (min j+4 >> 4) << 6; 8-11: low nibbles of j+4
    for j in range(4):
        sc[j] = Ls[j] | ((Ls[j + 4] >> 4) << 6)
        sc[j + 4] = Lm[j] | ((Lm[j + 4] >> 4) << 6)
        sc[j + 8] = (Ls[j + 4] & 0xF) | ((Lm[j + 4] & 0xF) << 4)
    d = _put_f16(y, 0, max_scale / _f32(63.0))
    dmin = _put_f16(y, 2, max_min / _f32(63.0))
    for j in range(8):
        dl = d * _f32(Ls[j])
        if dl != 0:
            _requant_affine(x[32 * j:32 * j + 32], dl, dmin * _f32(Lm[j]), nmax, L[32 * j:32 * j + 32])


@_jit
def _block_q6_k(x, y, L, scales):
    """Block layout: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d."""
    max_scale = _f32(0.0)
    max_abs = _f32(0.0)
    for j in range(16):
        scales[j] = _make_qx_quants(x[16 * j:16 * j + 16], 32, L[16 * j:16 * j + 16])
        if abs(scales[j]) > max_abs:
            max_abs = abs(scales[j])
            max_scale = scales[j]
    if max_abs < GROUP_MAX_EPS:
        y[:] = 0
        return
    iscale = _f32(-128.0) / max_scale
    d = _put_f16(y, 208, _f32(1.0) / iscale)
    for j in range(16):
        s = min(127, _nearest_int(iscale * scales[j]))
        y[192 + j] = s & 0xFF
        dl = d * _f32(s)
        if dl != 0:
            _requant_sym(x[16 * j:16 * j + 16], dl, 32, L[16 * j:16 * j + 16])
    for j in range(0, QK_K, 128):  # per 128 values: ql 64 bytes, qh 32 bytes
        ql = y[j // 2:j // 2 + 64]
        qh = y[128 + j // 4:128 + j // 4 + 32]
        for l in range(32):
            a, b, c, e = L[j + l], L[j + l + 32], L[j + l + 64], L[j + l + 96]
            ql[l] = (a & 0xF) | ((c & 0xF) << 4)
            ql[l + 32] = (b & 0xF) | ((e & 0xF) << 4)
            qh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)


# ---- K-quant rows ----

@_jit
def quantize_row_q2_k(x, y):
    L, Laux, w = np.empty(QK_K, np.int32), np.empty(16, np.int32), np.empty(16, np.float32)
    scales, mins = np.empty(16, np.float32), np.empty(16, np.float32)
    for b in range(x.size // QK_K):
        _block_q2_k(x[QK_K * b:QK_K * (b + 1)], y[84 * b:84 * (b + 1)], L, Laux, w, scales, mins)


@_jit
def quantize_row_q3_k(x, y):
    L, scales = np.empty(QK_K, np.int32), np.empty(16, np.float32)
    for b in range(x.size // QK_K):
        _block_q3_k(x[QK_K * b:QK_K * (b + 1)], y[110 * b:110 * (b + 1)], L, scales)


@_jit
def _quantize_row_q45_k(x, y, nmax, rmin, nstep, type_size):
    L, Laux, w = np.empty(QK_K, np.int32), np.empty(32, np.int32), np.empty(32, np.float32)
    scales, mins = np.empty(8, np.float32), np.empty(8, np.float32)
    Ls, Lm = np.empty(8, np.int32), np.empty(8, np.int32)
    for b in range(x.size // QK_K):
        yb = y[type_size * b:type_size * (b + 1)]
        _block_q45_k(x[QK_K * b:QK_K * (b + 1)], yb, nmax, rmin, nstep, L, Laux, w, scales, mins, Ls, Lm)
        if nmax == 15:  # Q4_K: qs[128], per 64 values: byte l = L[l] | L[l+32] << 4
            for j in range(0, QK_K, 64):
                for l in range(32):
                    yb[16 + j // 2 + l] = L[j + l] | (L[j + l + 32] << 4)
        else:  # Q5_K: qh[32] holds bit 4 (values 64k+l -> bit 2k, 64k+32+l -> bit 2k+1), then qs[128] as Q4_K
            yb[16:48] = 0
            for j in range(0, QK_K, 64):
                for l in range(32):
                    a, b2 = L[j + l], L[j + l + 32]
                    yb[16 + l] |= ((a >> 4) << (j // 32)) | ((b2 >> 4) << (j // 32 + 1))
                    yb[48 + j // 2 + l] = (a & 0xF) | ((b2 & 0xF) << 4)


@_jit
def quantize_row_q4_k(x, y):
    _quantize_row_q45_k(x, y, 15, -1.0, 20, 144)


@_jit
def quantize_row_q5_k(x, y):
    _quantize_row_q45_k(x, y, 31, -0.5, 15, 176)


@_jit
def quantize_row_q6_k(x, y):
    L, scales = np.empty(QK_K, np.int32), np.empty(16, np.float32)
    for b in range(x.size // QK_K):
        _block_q6_k(x[QK_K * b:QK_K * (b + 1)], y[210 * b:210 * (b + 1)], L, scales)


@_jit
def quantize_row_q8_k(x, y):
    """Q8_K (ggml quantize_row_q8_K_ref), the K-quant activation format: float32 d = max/-127,
    qs[256] int8 = round(x/d) (ties to even, at most 127), int16 bsums[16] = sums of 16 qs."""
    for b in range(x.size // QK_K):
        xb, yb = x[QK_K * b:QK_K * (b + 1)], y[292 * b:292 * (b + 1)]
        mx = _absmax_signed(xb)
        iscale = _f32(-127.0) / mx if mx != 0 else _f32(0.0)
        for j in range(QK_K):
            yb[4 + j] = min(127, _nearest_int(iscale * xb[j])) & 0xFF
        for g in range(16):
            s = 0
            for j in range(16):
                s += np.int8(yb[4 + 16 * g + j])
            _put_u16(yb, 260 + 2 * g, s & 0xFFFF)
        bits = np.int64(np.float32(_f32(1.0) / iscale if mx != 0 else _f32(0.0)).view(np.uint32))
        _put_u16(yb, 0, bits & 0xFFFF)
        _put_u16(yb, 2, bits >> 16)


# ---- driver ----

_F16, _BF16 = int(GGMLType.F16), int(GGMLType.BF16)
_Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0 = (int(GGMLType[t]) for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"))
_Q2_K, _Q3_K, _Q4_K, _Q5_K, _Q6_K, _Q8_K = (int(GGMLType[t]) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"))
_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


@_jit
def _quantize_row(x, y, code):
    if code == _F16:
        quantize_row_f16(x, y)
    elif code == _BF16:
        quantize_row_bf16(x, y)
    elif code == _Q4_0:
        quantize_row_q4_0(x, y)
    elif code == _Q4_1:
        quantize_row_q4_1(x, y)
    elif code == _Q5_0:
        quantize_row_q5_0(x, y)
    elif code == _Q5_1:
        quantize_row_q5_1(x, y)
    elif code == _Q8_0:
        quantize_row_q8_0(x, y)
    elif code == _Q2_K:
        quantize_row_q2_k(x, y)
    elif code == _Q3_K:
        quantize_row_q3_k(x, y)
    elif code == _Q4_K:
        quantize_row_q4_k(x, y)
    elif code == _Q5_K:
        quantize_row_q5_k(x, y)
    elif code == _Q6_K:
        quantize_row_q6_k(x, y)
    elif code == _Q8_K:
        quantize_row_q8_k(x, y)


@njit(cache=True, nogil=True, parallel=True)
def _quantize_rows(x, out, code):
    """x float32 (n_rows, n_cols) -> out uint8 (n_rows, row_bytes), one row per task."""
    for r in prange(x.shape[0]):
        _quantize_row(x[r], out[r], code)


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    """x: float (..., n_cols) -> uint8 (..., row_bytes) of `qtype` blocks (id, GGMLType or name).

    n_cols must be a multiple of the type's block size; quantized (non-float) types reject NaN and inf."""
    info = type_info(qtype)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise QuantTypeError("cannot quantize a scalar: expected an array of shape (..., n_cols)")
    x = np.ascontiguousarray(x)
    n_cols = x.shape[-1]
    nbytes = row_bytes(info.type, n_cols)
    if info.type == GGMLType.F32:
        return x.view(np.uint8).copy()
    if info.type not in _FLOAT_TYPES and not np.isfinite(x).all():
        raise QuantTypeError(f"cannot quantize NaN or infinity to {info.name}: its blocks have finite scales")
    rows = x.reshape(-1, n_cols)  # (n_rows, n_cols)
    out = np.empty((rows.shape[0], nbytes), np.uint8)  # (n_rows, row_bytes)
    if rows.shape[0] and n_cols:
        _quantize_rows(rows, out, int(info.type))
    return out.reshape(*x.shape[:-1], nbytes)
