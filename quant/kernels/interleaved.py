"""Integer dots over interleaved rows (quant.interleave): 16 rows of a group at once, one row per 32-bit lane.

The unit is ggml's vpdpbusd with the activation broadcast: 64 weight bytes (4 quants of each of 16 rows) against 4
int8 activations repeated in every lane give each row's sum of 4 products, added to its lane. The sub-block scales
and minimums of the 16 rows are lane vectors too, so a block ends in lane-wise multiplies, one conversion and one
FMA per token: no horizontal sums at all, and each unpacked weight vector serves every token of the call.

  dots(w, base, qx, dx, sums, ks, out, r)   out[k, r:r + 16] = the dots of the group at w[base:] with activation
                                             row k of (qx, dx, sums), for the tokens k of the tuple ks (its length
                                             compiled in): Q8_K activations for the K-quants, Q8_0 for the
                                             32-block types; sums bs (xs for Q4_1 and Q5_1), as the row kernels'

Per variant (quant.jit.isa): avx512vnni one 512-bit vpdpbusd per 64 bytes; avxvnni two 256-bit ones (Q8_0's quants
moved up by 128 for both, the offset taken back through the activations' sums); avx2 vpmaddubsw + vpmaddwd (exact:
unsigned quants <= 63, Q8_0's signed ones by ggml's sign trick); portable widening multiplies. All give the same
integer sums, then the same float operations, so the same bits. The integer sums per block are the row kernels'
(simd.py); the float steps are grouped differently, so results agree with theirs to float32 rounding, not bit for
bit.
"""

import contextlib

from llvmlite import ir
from numba.core import cgutils

from .. import interleave as L
from ..jit.isa import ISA
from ..types import GGMLType, type_info
from .simd import F32, I8, I16, I32, I64, _fn, _shuffle, _splat, tokens_intrinsic

R = L.ROWS
V16I, V16F, V64B = ir.VectorType(I32, R), ir.VectorType(F32, R), ir.VectorType(I8, 4 * R)


def _halves(builder, v):
    n = v.type.count // 2
    return _shuffle(builder, v, v, range(n)), _shuffle(builder, v, v, range(n, 2 * n))


def _join(builder, a, b):
    return _shuffle(builder, a, b, range(2 * a.type.count))


def _dot4(builder, acc, u, x, isa, signed=False):
    """acc (16 x i32) + per lane the sum of 4 products of u's bytes (unsigned; signed: int8, AVX2 and portable only)
    and x's (signed, 16 x i32 words)."""
    assert not (signed and isa in ("avx512vnni", "avxvnni"))
    if isa == "avx512vnni":
        fn = _fn(builder, "llvm.x86.avx512.vpdpbusd.512", V16I, [V16I] * 3)
        return builder.call(fn, [acc, builder.bitcast(u, V16I), x])
    if isa == "portable":
        w = ir.VectorType(I32, 4 * R)
        p = builder.mul((builder.sext if signed else builder.zext)(u, w), builder.sext(builder.bitcast(x, V64B), w))
        quads = [_shuffle(builder, p, p, range(j, 4 * R, 4)) for j in range(4)]
        return builder.add(acc, builder.add(builder.add(quads[0], quads[1]), builder.add(quads[2], quads[3])))
    v8, b32 = ir.VectorType(I32, 8), ir.VectorType(I8, 32)
    parts = []
    for a, uu, xx in zip(_halves(builder, acc), _halves(builder, builder.bitcast(u, V16I)), _halves(builder, x),
                             strict=True):
        if isa == "avxvnni":
            fn = _fn(builder, "llvm.x86.avx512.vpdpbusd.256", v8, [v8] * 3)
            parts.append(builder.call(fn, [a, uu, xx]))
            continue
        uu, xx = builder.bitcast(uu, b32), builder.bitcast(xx, b32)
        if signed:  # |u| times x with u's sign (ggml's AVX2 trick)
            psign = _fn(builder, "llvm.x86.avx2.psign.b", b32, [b32, b32])
            uu, xx = builder.call(psign, [uu, uu]), builder.call(psign, [xx, uu])
        p16 = builder.call(_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(I16, 16), [b32, b32]), [uu, xx])
        ones = ir.Constant(ir.VectorType(I16, 16), [1] * 16)
        parts.append(builder.add(a, builder.call(_fn(builder, "llvm.x86.avx2.pmadd.wd", v8,
                                                     [p16.type, p16.type]), [p16, ones])))
    return _join(builder, *parts)


def _dot2(builder, acc, a, b, isa):
    """acc (16 x i32) + per lane a.lo16 b.lo16 + a.hi16 b.hi16 (signed 16-bit halves of each lane)."""
    if isa == "avx512vnni":
        return builder.call(_fn(builder, "llvm.x86.avx512.vpdpwssd.512", V16I, [V16I] * 3), [acc, a, b])
    lo = lambda v: builder.ashr(builder.shl(v, _splat(builder, 16, R, I32)), _splat(builder, 16, R, I32))  # noqa
    hi = lambda v: builder.ashr(v, _splat(builder, 16, R, I32))  # noqa: E731
    return builder.add(acc, builder.add(builder.mul(lo(a), lo(b)), builder.mul(hi(a), hi(b))))


class _Block:
    """Helpers for one block of a group: constants, lane-vector loads at the block's offset o, the per-token
    float accumulators, and the broadcast activation words."""

    def __init__(self, builder, arr, toks):
        self.b, self.arr, self.toks = builder, arr, toks
        self.fma = _fn(builder, "llvm.fmuladd.v16f32", V16F, [V16F] * 3)
        self.accs = [cgutils.alloca_once_value(builder, ir.Constant(V16F, [0.0] * R)) for _ in toks]
        self.zero = ir.Constant(V16I, [0] * R)

    def c(self, v):
        return _splat(self.b, v, R, I32)

    def words(self, o, k):  # 16 x i32: word k of the 16 rows
        return self.arr.load(0, self.b.add(o, ir.Constant(I64, 4 * R * k)), V16I)

    def halves(self, o, k):  # 16 x float32: the fp16 field at o + 32 k of the 16 rows
        v = self.arr.load(0, self.b.add(o, ir.Constant(I64, 2 * R * k)), ir.VectorType(I16, R))
        return self.b.fpext(self.b.bitcast(v, ir.VectorType(ir.HalfType(), R)), V16F)

    def x(self, tok, at):  # 16 x i32: the 4 activation bytes at qx[at:] in every lane
        return _splat(self.b, tok.load(2, at, I32), R, I32)

    def bs_pairs(self, tok, ib, per):
        """The token's sums of qx per 16 of block ib as (i16, i16) pair words: (bs[2p], bs[2p + 1]) (per 16) or the
        sums per 32 paired (per 32); |sums| <= 4096 fits."""
        b = self.b
        v = tok.load(4, b.mul(ib, ir.Constant(I64, 16)), V16I)
        if per == 32:
            v = b.add(_shuffle(b, v, v, range(0, 16, 2)), _shuffle(b, v, v, range(1, 16, 2)))
        return b.bitcast(b.trunc(v, ir.VectorType(I16, v.type.count)), ir.VectorType(I32, v.type.count // 2))

    def add(self, j, isum, scale):  # token j's accumulator += isum (16 x i32) * scale (16 x float32)
        b = self.b
        b.store(b.call(self.fma, [b.sitofp(isum, V16F), scale, b.load(self.accs[j])]), self.accs[j])

    def results(self):
        return [self.b.load(a) for a in self.accs]

    @contextlib.contextmanager
    def blocks(self, base, qtype):
        """The loop over the blocks of the group at base: (block index, its byte offset)."""
        info, b = type_info(qtype), self.b
        n = b.sdiv(self.arr.cols(2), ir.Constant(I64, info.block_size))
        with cgutils.for_range(b, n) as loop:  # hot loop: one block of 16 rows
            yield loop.index, b.add(base, b.mul(loop.index, ir.Constant(I64, R * info.type_size)))


def _q4_k(builder, arr, base, toks, isa):
    k = _Block(builder, arr, toks)
    b, c, T = builder, k.c, len(toks)
    with k.blocks(base, GGMLType.Q4_K) as (ib, o):
        d, dmin = k.halves(o, 0), k.halves(o, 1)
        w = b.add(o, ir.Constant(I64, 4 * R))  # the words
        u = [k.words(w, j) for j in range(3)]  # blocks.scale_min_k4 of 16 rows: scales 0-3, 4-7, minimums 0-3, 4-7
        m1, m2, m3 = c(0x3F3F3F3F), c(0x0F0F0F0F), c(0x03030303)
        sm = [b.and_(u[0], m1),
              b.or_(b.and_(u[2], m2), b.shl(b.and_(b.lshr(u[0], c(6)), m3), c(4))),
              b.and_(u[1], m1),
              b.or_(b.and_(b.lshr(u[2], c(4)), m2), b.shl(b.and_(b.lshr(u[1], c(6)), m3), c(4)))]
        sc = [b.and_(b.lshr(sm[s // 4], c(8 * (s % 4))), c(0xFF)) for s in range(8)]
        mins = []  # (m_2p, m_2p+1) as i16 pairs per lane
        for v in sm[2:]:
            mins.append(b.or_(b.and_(v, c(0xFF)), b.shl(b.and_(v, c(0xFF00)), c(8))))
            mins.append(b.or_(b.and_(b.lshr(v, c(16)), c(0xFF)), b.and_(b.lshr(v, c(8)), c(0xFF0000))))
        isums = [k.zero] * T
        lo4, xo = _splat(b, 15, 4 * R), b.mul(ib, ir.Constant(I64, 256))
        for ch in range(4):  # chunk ch: sub-block 2 ch in the low nibbles, 2 ch + 1 in the high
            chains = 2 if T == 1 else 1  # independent sums, so one token's vpdpbusd do not wait on each other
            s = [[[k.zero] * chains for _ in range(2)] for _ in toks]
            for g in range(8):
                v = b.bitcast(k.words(w, 3 + 8 * ch + g), V64B)
                nib = (b.and_(v, lo4), b.and_(b.lshr(v, _splat(b, 4, 4 * R)), lo4))
                for j, tok in enumerate(toks):
                    for h in range(2):
                        x = k.x(tok, b.add(xo, ir.Constant(I64, 64 * ch + 32 * h + 4 * g)))
                        s[j][h][g % chains] = _dot4(b, s[j][h][g % chains], nib[h], x, isa)
            for j in range(T):
                for h in range(2):
                    total = s[j][h][0] if chains == 1 else b.add(*s[j][h])
                    isums[j] = b.add(isums[j], b.mul(total, sc[2 * ch + h]))
        for j, tok in enumerate(toks):  # value d sc q - dmin m: one float step per token
            dx = _splat(b, tok.load(3, ib, F32), R, F32)
            pairs = k.bs_pairs(tok, ib, 32)
            msum = k.zero
            for p in range(4):
                msum = _dot2(b, msum, mins[p], _splat(b, b.extract_element(pairs, ir.Constant(I32, p)), R, I32), isa)
            k.add(j, isums[j], b.fmul(d, dx))
            k.add(j, msum, b.fneg(b.fmul(dmin, dx)))
    return k.results()


def _q6_k(builder, arr, base, toks, isa):
    k = _Block(builder, arr, toks)
    b, c, T = builder, k.c, len(toks)
    with k.blocks(base, GGMLType.Q6_K) as (ib, o):
        d, w = k.halves(o, 0), b.add(o, ir.Constant(I64, 2 * R))
        scw = [k.words(w, j) for j in range(4)]  # int8 scale s at byte s % 4 of word s // 4
        scale = lambda s: b.ashr(b.shl(scw[s // 4], c(24 - 8 * (s % 4))), c(24))  # noqa: E731
        isums, xo = [k.zero] * T, b.mul(ib, ir.Constant(I64, 256))
        m4, m30 = _splat(b, 15, 4 * R), _splat(b, 0x30, 4 * R)
        sh = lambda v, n: b.lshr(v, _splat(b, n, 4 * R))  # noqa: E731
        for h in range(2):  # element 128h + 32k + 4w + i: nibble k // 2 of ql word k % 2, bits 2k of qh, of t = 8h + w
            for half in range(2):  # words w of sub-blocks 8h + 2k + half
                s = [[k.zero] * 4 for _ in toks]
                for w4 in range(4):
                    wi = 4 * half + w4
                    ql0, ql1, qh = (b.bitcast(k.words(w, 4 + 3 * (8 * h + wi) + p), V64B) for p in range(3))
                    ql = (ql0, ql1)
                    for kk in range(4):  # (nibble) | (two bits at 2 kk, moved to bits 4-5): one vpternlog each
                        lo = b.and_(ql[kk % 2] if kk < 2 else sh(ql[kk % 2], 4), m4)
                        hi = b.shl(qh, _splat(b, 4 - 2 * kk, 4 * R)) if kk < 2 else sh(qh, 2 * kk - 4)
                        u = b.or_(lo, b.and_(hi, m30))
                        for j, tok in enumerate(toks):
                            x = k.x(tok, b.add(xo, ir.Constant(I64, 128 * h + 32 * kk + 4 * wi)))
                            s[j][kk] = _dot4(b, s[j][kk], u, x, isa)
                for j in range(T):
                    for kk in range(4):
                        isums[j] = b.add(isums[j], b.mul(s[j][kk], scale(8 * h + 2 * kk + half)))
        # sum (q - 32) x = sum q x - 32 sum_s sc_s bs_s, the scales as (i16, i16) pairs per lane
        pairs = []
        for v in scw:
            lo = b.and_(b.ashr(b.shl(v, c(24)), c(24)), c(0xFFFF))
            pairs.append(b.or_(lo, b.shl(b.ashr(b.shl(v, c(16)), c(24)), c(16))))
            lo = b.and_(b.ashr(b.shl(v, c(8)), c(24)), c(0xFFFF))
            pairs.append(b.or_(lo, b.shl(b.ashr(v, c(24)), c(16))))
        for j, tok in enumerate(toks):
            bsp = k.bs_pairs(tok, ib, 16)
            msum = k.zero
            for p in range(8):
                msum = _dot2(b, msum, pairs[p], _splat(b, b.extract_element(bsp, ir.Constant(I32, p)), R, I32), isa)
            dx = _splat(b, tok.load(3, ib, F32), R, F32)
            k.add(j, b.sub(isums[j], b.shl(msum, c(5))), b.fmul(d, dx))
    return k.results()


def _q32(qtype):
    """The core of a 32-block type: value d (q - offset) (Q8_0, Q4_0, Q5_0; sums = bs, the offsets taken back through
    the activations' sums) or d q + m (Q4_1, Q5_1; sums = xs, dx times the block's sum of qx)."""
    int8, fifth = qtype == GGMLType.Q8_0, qtype in (GGMLType.Q5_0, GGMLType.Q5_1)
    has_m = qtype in (GGMLType.Q4_1, GGMLType.Q5_1)
    offset = {GGMLType.Q4_0: 8, GGMLType.Q5_0: 16}.get(qtype, 0)

    def core(builder, arr, base, toks, isa):
        k = _Block(builder, arr, toks)
        b, c, T = builder, k.c, len(toks)
        vnni = isa in ("avx512vnni", "avxvnni")
        off = 128 if int8 and vnni else offset  # VNNI multiplies unsigned bytes: Q8_0's quants are moved up by 128
        with k.blocks(base, qtype) as (ib, o):
            d, m = k.halves(o, 0), (k.halves(o, 1) if has_m else None)
            w = b.add(o, ir.Constant(I64, 2 * R * (2 if has_m else 1)))
            quads = []  # quads[q]: elements 4q .. 4q + 3 of the 16 rows
            if int8:
                for j in range(8):
                    v = b.bitcast(k.words(w, j), V64B)
                    quads.append(b.xor(v, _splat(b, 128, 4 * R)) if vnni else v)
            else:
                lo4, first = _splat(b, 15, 4 * R), 1 if fifth else 0
                vs = [b.bitcast(k.words(w, first + j), V64B) for j in range(4)]
                quads = [b.and_(v, lo4) for v in vs] + [b.and_(b.lshr(v, _splat(b, 4, 4 * R)), lo4) for v in vs]
                if fifth:  # bit q + 8i of word 0: element 4q + i's fifth bit
                    qh = k.words(w, 0)
                    quads = [b.or_(u, b.bitcast(b.shl(b.and_(b.lshr(qh, c(q)), c(0x01010101)), c(4)), V64B))
                             for q, u in enumerate(quads)]
            for j, tok in enumerate(toks):
                chains = 2 if T == 1 else 1
                acc = [k.zero] * chains
                for q in range(8):
                    x = k.x(tok, b.add(b.mul(ib, ir.Constant(I64, 32)), ir.Constant(I64, 4 * q)))
                    acc[q % chains] = _dot4(b, acc[q % chains], quads[q], x, isa, signed=int8 and not vnni)
                isum = acc[0] if chains == 1 else b.add(*acc)
                dx = _splat(b, tok.load(3, ib, F32), R, F32)
                if off:
                    at = b.mul(ib, ir.Constant(I64, 2))
                    bsum = b.add(tok.load(4, at, I32), tok.load(4, b.add(at, ir.Constant(I64, 1)), I32))
                    isum = b.sub(isum, _splat(b, b.mul(bsum, ir.Constant(I32, off)), R, I32))
                k.add(j, isum, b.fmul(d, dx))
                if m is not None:  # the minimum times xs = dx sum(x)
                    xs = _splat(b, tok.load(4, ib, F32), R, F32)
                    b.store(b.call(k.fma, [m, xs, b.load(k.accs[j])]), k.accs[j])
        return k.results()

    return core


_CORES = {GGMLType.Q4_K: _q4_k, GGMLType.Q6_K: _q6_k,
          **{t: _q32(t) for t in (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1)}}


def dots_intrinsic(qtype, isa: str = ISA):
    """The 16-row dots intrinsic of an interleaved type (quant.interleave.TYPES) emitted for variant `isa`."""
    core = _CORES[type_info(qtype).type]
    return tokens_intrinsic(lambda builder, arr, base, toks: core(builder, arr, base, toks, isa))


assert set(_CORES) == set(L.TYPES)
dots_q4_k, dots_q6_k, dots_q8_0, dots_q4_0, dots_q4_1, dots_q5_0, dots_q5_1 = (
    dots_intrinsic(t) for t in (GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1,
                                GGMLType.Q5_0, GGMLType.Q5_1))
