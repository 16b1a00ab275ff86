"""Quantize float32 rows to raw GGML blocks with Numba: every storage type, one parallel driver.

Row quantizers share one signature, `quantize_row_xxx(x, y)`: x float32 (n_cols,), y uint8 (row_bytes,); block
layouts come from quant.blocks. The Q8 block quantizers (`q8_0_block`, `q8_k_block`) also quantize the integer
kernels' activations (quant.activation).

- F16, BF16 and the 32-blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) round exactly like `gguf.quants`: every
  multiply and add is a separate float32 operation (no fused multiply-add), fp16 rounds to nearest even,
  so the bytes are equal. ggml built with FMA contraction can differ from both in Q4_0/Q5_0 (see tests).
- IQ4_NL follows ggml's `quantize_iq4_nl` (no importance matrix): per block, 15 trial scales around
  max / 127 fitted by x^2-weighted least squares onto the nearest of the 16 non-linear levels.
- The K-quants follow ggml's reference quantizers `quantize_row_q{2,3,4,5,6}_K_ref`: a weighted
  least-squares search for each sub-block's scale (and min), the sub-block scales quantized to 4/6/8 bits
  under an fp16 super-block scale, then every value re-quantized against the scales as stored.
"""

import numpy as np
from numba import njit, prange

from . import blocks as B
from .blocks import KVALUES_IQ4NL, QK
from .fp16 import float_to_bf16, float_to_half, half_to_float
from .types import QK_K, GGMLType, QuantTypeError, row_bytes, type_info

# error_model="numpy": a float division by zero gives inf/nan instead of raising (all are guarded anyway)
_jit = njit(cache=True, nogil=True, error_model="numpy")
_f32 = np.float32
GROUP_MAX_EPS = np.float32(1e-15)  # ggml: a sub-block with |x| below this is all zero


# ---- scalar helpers ----

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
def nearest_int(f):
    """ggml's nearest_int: float32 to the nearest integer, ties to even (|f| < 2**22), via the 1.5*2**23 trick."""
    bits = np.int64(np.float32(np.float32(f) + np.float32(12582912.0)).view(np.uint32))
    return (bits & 0x7FFFFF) - 0x400000


@_jit
def roundf(v):
    """C roundf: nearest integer, halves away from zero (v - trunc(v) is exact in float32)."""
    r = int(v)
    frac = v - np.float32(r)
    if frac >= 0.5:
        return r + 1
    if frac <= -0.5:
        return r - 1
    return r


@_jit
def absmax_signed(x):
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
    d = absmax_signed(x) / _f32(-half)
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
def _row_32(x, y, size, levels, asym, m_at, qh_at, qs_at):
    """The 4/5-bit 32-blocks: fp16 d at 0, fp16 min at m_at (asym), fifth bits at qh_at (>= 0), nibbles at qs_at;
    codes from _quants_asym (levels - 1 = largest code) or _quants_sym (levels / 2 = the zero point)."""
    q = np.empty(32, np.int32)
    for b in range(x.size // 32):
        xb, yb = x[QK * b:QK * b + QK], y[size * b:size * (b + 1)]
        if asym:
            d, mn = _quants_asym(xb, q, levels - 1)
            _put_f16(yb, 0, d)
            _put_f16(yb, m_at, mn)
        else:
            _put_f16(yb, 0, _quants_sym(xb, q, levels // 2))
        if qh_at >= 0:
            B.pack_qh32(q, yb, qh_at)
        B.pack_nibbles(q, yb, qs_at)


@_jit
def quantize_row_q4_0(x, y):
    _row_32(x, y, B.Q4_0_SIZE, 16, False, -1, -1, B.Q4_0_QS)


@_jit
def quantize_row_q5_0(x, y):
    _row_32(x, y, B.Q5_0_SIZE, 32, False, -1, B.Q5_0_QH, B.Q5_0_QS)


@_jit
def quantize_row_q4_1(x, y):
    _row_32(x, y, B.Q4_1_SIZE, 16, True, B.Q4_1_M, -1, B.Q4_1_QS)


@_jit
def quantize_row_q5_1(x, y):
    _row_32(x, y, B.Q5_1_SIZE, 32, True, B.Q5_1_M, B.Q5_1_QH, B.Q5_1_QS)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def q8_0_block(xb, q):
    """ggml's quantize_row_q8_0_ref for one block: q (32,) int8 = roundf(x / d), d = amax / 127; returns d as
    float32 (stored as fp16 by the caller). Also the integer kernels' activation format."""
    amax = _f32(0.0)
    for v in xb:
        amax = max(amax, abs(v))
    d = amax / _f32(127.0)
    inv = _f32(1.0) / d if d != 0 else _f32(0.0)
    for j in range(QK):
        q[j] = roundf(xb[j] * inv)
    return d


@_jit
def quantize_row_q8_0(x, y):
    for b in range(x.size // QK):
        yb = y[B.Q8_0_SIZE * b:B.Q8_0_SIZE * (b + 1)]
        d = q8_0_block(x[QK * b:QK * b + QK], yb[B.Q8_0_QS:B.Q8_0_QS + QK].view(np.int8))
        _put_f16(yb, 0, d)


# ---- IQ4_NL (ggml-quants.c: quantize_row_iq4_nl_impl with super_block_size = block_size = 32, ntry = 7) ----

@_jit
def _best_index_iq4nl(x):
    """Index of the level of KVALUES_IQ4NL nearest to x (ggml's best_index_int8: bisection, ties to the upper)."""
    if x <= KVALUES_IQ4NL[0]:
        return 0
    if x >= KVALUES_IQ4NL[15]:
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < KVALUES_IQ4NL[mid]:
            hi = mid
        else:
            lo = mid
    return lo if x - _f32(KVALUES_IQ4NL[lo]) < _f32(KVALUES_IQ4NL[hi]) - x else hi


@_jit
def _iq4nl_fit(xb, w, iscale):
    """x^2-weighted sums (sum w q x, sum w q^2) with q the level nearest to iscale * x."""
    sumqx = _f32(0.0)
    sumq2 = _f32(0.0)
    for j in range(QK):
        q = _f32(KVALUES_IQ4NL[_best_index_iq4nl(iscale * xb[j])])
        sumqx += w[j] * q * xb[j]
        sumq2 += w[j] * q * q
    return sumqx, sumq2


@_jit
def quantize_row_iq4_nl(x, y):
    ntry = 7
    w, L = np.empty(QK, np.float32), np.empty(QK, np.int32)
    for b in range(x.size // QK):
        xb, yb = x[QK * b:QK * b + QK], y[B.IQ4_NL_SIZE * b:B.IQ4_NL_SIZE * (b + 1)]
        for j in range(QK):
            w[j] = xb[j] * xb[j]
        mx = absmax_signed(xb)
        d = _f32(0.0)
        if abs(mx) >= GROUP_MAX_EPS:
            d = -mx / _f32(KVALUES_IQ4NL[0])
            sumqx, sumq2 = _iq4nl_fit(xb, w, _f32(1.0) / d)
            d = sumqx / sumq2
            best = d * sumqx
            for itry in range(-ntry, ntry + 1):
                sumqx, sumq2 = _iq4nl_fit(xb, w, _f32(itry + KVALUES_IQ4NL[0]) / mx)
                if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                    d = sumqx / sumq2
                    best = d * sumqx
        _put_f16(yb, 0, d)  # ggml stores the float32 scale and picks the codes against it (not its fp16)
        inv = _f32(1.0) / d if d != 0 else _f32(0.0)
        for j in range(QK):
            L[j] = _best_index_iq4nl(inv * xb[j])
        B.pack_nibbles(L, yb, B.IQ4_NL_QS)


# ---- K-quant helpers (ggml-quants.c: make_qx_quants, make_q3_quants, make_qkx2_quants) ----

@_jit
def _qx_sums(x, iscale, nmax, L, write):
    """Weighted (w = x^2) sums of l*x and l*l for l = clamp(round(iscale*x), -nmax, nmax-1); L = l + nmax if write."""
    sumlx = _f32(0.0)
    suml2 = _f32(0.0)
    for i in range(x.size):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
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
    mx = absmax_signed(x)
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
    mx = absmax_signed(x)
    if abs(mx) < GROUP_MAX_EPS:
        L[:] = 0
        return _f32(0.0)
    iscale = _f32(-nmax) / mx
    sumlx = _f32(0.0)
    suml2 = _f32(0.0)
    for i in range(x.size):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
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
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
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
        l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
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
        L[i] = max(0, min(nmax, nearest_int((x[i] + dm) / d)))


@_jit
def _requant_sym(x, d, nmax, L):
    """L = clamp(round(x/d), -nmax, nmax-1) + nmax."""
    for i in range(x.size):
        L[i] = max(-nmax, min(nmax - 1, nearest_int(x[i] / d))) + nmax


@_jit
def _pack_2bit(L, y, o):
    """Q2_K/Q3_K low bits: per 128 values, byte l holds L[l], L[l+32], L[l+64], L[l+96] at bits 0, 2, 4, 6."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[o + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)) & 0xFF


# ---- K-quant blocks (256 values) ----

@_jit
def _block_q2_k(x, y, L, Laux, w, scales, mins):
    max_scale = _f32(0.0)
    max_min = _f32(0.0)
    for j in range(16):
        xs = x[16 * j:16 * j + 16]
        for l in range(16):
            w[l] = abs(xs[l])
        scales[j], mins[j] = _make_qkx2_quants(xs, w, 3, L[16 * j:16 * j + 16], Laux, -0.5, 0.1, 15, True)
        max_scale = max(max_scale, scales[j])
        max_min = max(max_min, mins[j])
    sc = y[B.Q2_K_SCALES:B.Q2_K_SCALES + 16]
    sc[:] = 0
    d = _f32(0.0)
    dmin = _f32(0.0)
    if max_scale > 0:
        iscale = _f32(15.0) / max_scale
        for j in range(16):
            sc[j] = nearest_int(iscale * scales[j]) & 0xFF
        d = max_scale / _f32(15.0)
    if max_min > 0:
        iscale = _f32(15.0) / max_min
        for j in range(16):
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) & 0xFF
        dmin = max_min / _f32(15.0)
    d = _put_f16(y, B.Q2_K_D, d)
    dmin = _put_f16(y, B.Q2_K_DMIN, dmin)
    for j in range(16):
        s, m = B.q2k_scale_min(y, 0, j)
        dl = d * _f32(s)
        if dl != 0:
            _requant_affine(x[16 * j:16 * j + 16], dl, dmin * _f32(m), 3, L[16 * j:16 * j + 16])
    _pack_2bit(L, y, B.Q2_K_QS)


@_jit
def _block_q3_k(x, y, L, Ls, scales):  # hmask: bit 2 of each code, qs: its low 2 bits
    max_scale = _f32(0.0)
    amax = _f32(0.0)
    for j in range(16):
        scales[j] = _make_q3_quants(x[16 * j:16 * j + 16], 4, L[16 * j:16 * j + 16])
        if abs(scales[j]) > amax:
            amax = abs(scales[j])
            max_scale = scales[j]
    Ls[:] = 32  # biased: scale 0
    d = _f32(0.0)
    if max_scale != 0:
        iscale = _f32(-32.0) / max_scale
        for j in range(16):
            Ls[j] = max(-32, min(31, nearest_int(iscale * scales[j]))) + 32
        d = _f32(1.0) / iscale
    if max_scale != 0:
        B.pack_q3k_scales(Ls, y, B.Q3_K_SCALES)
    else:
        y[B.Q3_K_SCALES:B.Q3_K_SCALES + 12] = 0
    d = _put_f16(y, B.Q3_K_D, d)
    for j in range(16):
        dl = d * _f32(B.q3k_scale(y, B.Q3_K_SCALES, j))
        if dl != 0:
            _requant_sym(x[16 * j:16 * j + 16], dl, 4, L[16 * j:16 * j + 16])
    hmask = y[B.Q3_K_HMASK:B.Q3_K_HMASK + 32]
    hmask[:] = 0
    for j in range(QK_K):  # the high bit of value j goes to hmask[j % 32], bit j // 32
        if L[j] > 3:
            hmask[j % 32] |= 1 << (j // 32)
            L[j] -= 4
    _pack_2bit(L, y, B.Q3_K_QS)


@_jit
def _block_q45_k(x, y, nmax, rmin, nstep, L, Laux, w, scales, mins, Ls, Lm):
    """Q4_K (nmax 15) / Q5_K (nmax 31) scales and codes L: writes d, dmin and the 12 packed 6-bit
    scales/mins; the caller packs L."""
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
        Ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        Lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    B.pack_scale_min_k4(Ls, Lm, y, B.Q4_K_SCALES)
    d = _put_f16(y, B.Q4_K_D, max_scale / _f32(63.0))
    dmin = _put_f16(y, B.Q4_K_DMIN, max_min / _f32(63.0))
    for j in range(8):
        dl = d * _f32(Ls[j])
        if dl != 0:
            _requant_affine(x[32 * j:32 * j + 32], dl, dmin * _f32(Lm[j]), nmax, L[32 * j:32 * j + 32])


@_jit
def _block_q6_k(x, y, L, scales):  # ql: low 4 bits of each code, qh: its high 2 bits
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
    d = _put_f16(y, B.Q6_K_D, _f32(1.0) / iscale)
    for j in range(16):
        s = min(127, nearest_int(iscale * scales[j]))
        y[B.Q6_K_SCALES + j] = s & 0xFF
        dl = d * _f32(s)
        if dl != 0:
            _requant_sym(x[16 * j:16 * j + 16], dl, 32, L[16 * j:16 * j + 16])
    for j in range(0, QK_K, 128):  # per 128 values: ql 64 bytes, qh 32 bytes
        ql = y[B.Q6_K_QL + j // 2:B.Q6_K_QL + j // 2 + 64]
        qh = y[B.Q6_K_QH + j // 4:B.Q6_K_QH + j // 4 + 32]
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
        _block_q2_k(x[QK_K * b:QK_K * (b + 1)], y[B.Q2_K_SIZE * b:B.Q2_K_SIZE * (b + 1)], L, Laux, w, scales, mins)


@_jit
def quantize_row_q3_k(x, y):
    L, Ls, scales = np.empty(QK_K, np.int32), np.empty(16, np.int32), np.empty(16, np.float32)
    for b in range(x.size // QK_K):
        _block_q3_k(x[QK_K * b:QK_K * (b + 1)], y[B.Q3_K_SIZE * b:B.Q3_K_SIZE * (b + 1)], L, Ls, scales)


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
                    yb[B.Q4_K_QS + j // 2 + l] = L[j + l] | (L[j + l + 32] << 4)
        else:  # Q5_K: qh[32] holds bit 4 (values 64k+l -> bit 2k, 64k+32+l -> bit 2k+1), then qs[128] as Q4_K
            qh = yb[B.Q5_K_QH:B.Q5_K_QH + 32]
            qh[:] = 0
            for j in range(0, QK_K, 64):
                for l in range(32):
                    a, b2 = L[j + l], L[j + l + 32]
                    qh[l] |= ((a >> 4) << (j // 32)) | ((b2 >> 4) << (j // 32 + 1))
                    yb[B.Q5_K_QS + j // 2 + l] = (a & 0xF) | ((b2 & 0xF) << 4)


@_jit
def quantize_row_q4_k(x, y):
    _quantize_row_q45_k(x, y, 15, -1.0, 20, B.Q4_K_SIZE)


@_jit
def quantize_row_q5_k(x, y):
    _quantize_row_q45_k(x, y, 31, -0.5, 15, B.Q5_K_SIZE)


@_jit
def quantize_row_q6_k(x, y):
    L, scales = np.empty(QK_K, np.int32), np.empty(16, np.float32)
    for b in range(x.size // QK_K):
        _block_q6_k(x[QK_K * b:QK_K * (b + 1)], y[B.Q6_K_SIZE * b:B.Q6_K_SIZE * (b + 1)], L, scales)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def q8_k_block(xb, q):
    """ggml's quantize_row_q8_K_ref for one block: q (256,) int8 = round(x / d) (ties to even, at most 127) with
    float32 d = max / -127 (the signed extreme maps to -127); returns d. The K-quants' activation format."""
    mx = absmax_signed(xb)
    if mx == 0:
        q[:] = 0
        return _f32(0.0)
    iscale = _f32(-127.0) / mx
    for j in range(QK_K):
        q[j] = min(127, nearest_int(iscale * xb[j]))
    return _f32(1.0) / iscale


@_jit
def quantize_row_q8_k(x, y):  # also int16 bsums[16]: sums of 16 qs
    for b in range(x.size // QK_K):
        yb = y[B.Q8_K_SIZE * b:B.Q8_K_SIZE * (b + 1)]
        qs = yb[B.Q8_K_QS:B.Q8_K_QS + QK_K].view(np.int8)
        d = q8_k_block(x[QK_K * b:QK_K * (b + 1)], qs)
        for g in range(16):
            total = 0
            for j in range(16 * g, 16 * g + 16):
                total += qs[j]
            _put_u16(yb, B.Q8_K_BSUMS + 2 * g, total & 0xFFFF)
        bits = np.int64(np.float32(d).view(np.uint32))
        _put_u16(yb, B.Q8_K_D, bits & 0xFFFF)
        _put_u16(yb, B.Q8_K_D + 2, bits >> 16)


# ---- driver ----

_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


@_jit
def _quantize_row(x, y, code):
    if code == GGMLType.F16:
        quantize_row_f16(x, y)
    elif code == GGMLType.BF16:
        quantize_row_bf16(x, y)
    elif code == GGMLType.Q4_0:
        quantize_row_q4_0(x, y)
    elif code == GGMLType.Q4_1:
        quantize_row_q4_1(x, y)
    elif code == GGMLType.Q5_0:
        quantize_row_q5_0(x, y)
    elif code == GGMLType.Q5_1:
        quantize_row_q5_1(x, y)
    elif code == GGMLType.Q8_0:
        quantize_row_q8_0(x, y)
    elif code == GGMLType.IQ4_NL:
        quantize_row_iq4_nl(x, y)
    elif code == GGMLType.Q2_K:
        quantize_row_q2_k(x, y)
    elif code == GGMLType.Q3_K:
        quantize_row_q3_k(x, y)
    elif code == GGMLType.Q4_K:
        quantize_row_q4_k(x, y)
    elif code == GGMLType.Q5_K:
        quantize_row_q5_k(x, y)
    elif code == GGMLType.Q6_K:
        quantize_row_q6_k(x, y)
    elif code == GGMLType.Q8_K:
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
