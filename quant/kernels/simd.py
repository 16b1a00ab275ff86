"""Integer dot products of weight quants with int8 activations, written as LLVM vector IR.

Numba types every integer operation on 64-bit lanes (4 per AVX2 register), so ggml's block dots are
emitted here directly through `numba.extending.intrinsic`. The unit is 32 weight quants u[l] (unpacked
from raw bytes with vector shifts and masks) against 32 int8 activations x[l]:

  madd(u, x) -> 8 x i32, lane k = sum(u[l] x[l], 4k <= l < 4k + 4)

The instructions depend on the variant chosen at start-up from the CPU's features (quant.jit.isa; every
intrinsic factory also takes the variant, so tests compare them in one process):
  avx2        vpmaddubsw (u8 x s8 -> s16 pairs; never saturates for |u| <= 128, |x| <= 127, or u <= 63) and
              vpmaddwd; signed quants use ggml's trick |u| x sign(u);
  avxvnni     32-block types: vpdpbusd on unsigned quants (signed ones offset by 128, Q4_0/Q5_0 unbiased), the
              offsets taken back from the integer sums through the activations' sums; K-quants: vpmaddubsw then
              vpdpwssd with the sub-block scales (multiply and accumulate in one);
  avx512vnni  on 512-bit registers: K-quants 64 quants (two sub-blocks) per instruction, per-lane float
              accumulators (both VNNI variants); 32-block types two blocks per vpdpbusd;
  portable    plain widening multiplies, which any LLVM target compiles (also when Numba targets another CPU).
All variants give identical integer sums per block (tests/test_matvec.py), and for the 32-block types the same
float operations on them, so the same bits.

Block offsets and the packed-field layouts are quant.blocks'; the unpackers here are their vector forms.
The intrinsics keep these vectors in registers across a whole block or row and reduce once:
  dot_row_32      a full row of a 32-block type (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL): the exact integer sums of
                  8 blocks gathered into one vector, then one float step for them (IQ4_NL: nibbles mapped to its
                  int8 levels by a byte shuffle, vpshufb);
  dot_row_q4_k, dot_row_q5_k, dot_row_q6_k   a full row of a K-quant: per 256-block, the sub-block scales
                  (unpacked with vector ops) applied as integers, minimums / offsets through the activation sums;
  dot_bytes       one 32-element unit with two 16-element scales (Q2_K, Q3_K; AVX2 scheme on every x86 variant).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import blocks as B
from ..jit.isa import ISA

I8, I16, I32, I64, F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
V32x8, V16x16, V8x32, V8xF = ir.VectorType(I8, 32), ir.VectorType(I16, 16), ir.VectorType(I32, 8), ir.VectorType(F32, 8)
V64x8, V16x32, V16xF = ir.VectorType(I8, 64), ir.VectorType(I32, 16), ir.VectorType(F32, 16)
VNNI = ("avxvnni", "avx512vnni")


# ---- IR helpers ----

def _fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _splat(builder, value, n, t=I8):
    """<n x t> with every lane `value` (an ir.Value or a Python number)."""
    vt = ir.VectorType(t, n)
    if isinstance(value, (int, float)):
        return ir.Constant(vt, [value] * n)
    if value.type != t:
        value = builder.trunc(value, t)
    v = builder.insert_element(ir.Constant(vt, None), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, None), ir.Constant(ir.VectorType(I32, n), [0] * n))


def _shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, len(lanes)), list(lanes)))


def _load(builder, ptr, t):
    """A scalar or vector of type t at ptr (unaligned)."""
    return builder.load(builder.bitcast(ptr, t.as_pointer()), align=1)


class _Arrays:
    """Data pointers and lengths of the array arguments of an intrinsic."""

    def __init__(self, context, builder, sig, args):
        self.context, self.builder, self.sig, self.args = context, builder, sig, args

    def data(self, i):
        return self.context.make_array(self.sig.args[i])(self.context, self.builder, value=self.args[i]).data

    def length(self, i):
        ary = self.context.make_array(self.sig.args[i])(self.context, self.builder, value=self.args[i])
        return self.builder.extract_value(ary.shape, 0)

    def cols(self, i):
        """The last dimension of array i (the length of a 1-D one, the row length of a 2-D one)."""
        ary = self.context.make_array(self.sig.args[i])(self.context, self.builder, value=self.args[i])
        return self.builder.extract_value(ary.shape, self.sig.args[i].ndim - 1)

    def int(self, i):
        return self.context.cast(self.builder, self.args[i], self.sig.args[i], types.int64)

    def ptr(self, i, offset):
        """The address of element `offset` of array i."""
        return self.builder.gep(self.data(i), [offset])

    def load(self, i, offset, t):
        """A scalar or vector of type t at byte/element `offset` of array i (unaligned)."""
        return _load(self.builder, self.ptr(i, offset), t)


class _Token:
    """The activation arrays of one token, arguments 2 (qx), 3 (dx) and 4 (sums) of a row-dot intrinsic: the 1-D
    arrays themselves (k None), or row k of (n_tok, ...) C-contiguous arrays."""

    def __init__(self, arrays, k=None):
        self.arrays, self.k = arrays, k

    def ptr(self, i, offset):
        if self.k is not None:
            offset = self.arrays.builder.add(self.arrays.builder.mul(self.k, self.arrays.cols(i)), offset)
        return self.arrays.ptr(i, offset)

    def load(self, i, offset, t):
        return _load(self.arrays.builder, self.ptr(i, offset), t)


def _half(builder, arrays, i, offset):
    """The fp16 at bytes offset.. of array i as float32 (vcvtph2ps with F16C; NaN payloads are quieted)."""
    return builder.fpext(builder.bitcast(arrays.load(i, offset, I16), ir.HalfType()), F32)


def _madd(builder, u, x, signed, isa):
    """8 x i32: lane k = sum(u[l] x[l], 4k <= l < 4k + 4); u unsigned unless `signed`."""
    if isa != "portable":
        if signed:  # |u| times x with u's sign
            psign = _fn(builder, "llvm.x86.avx2.psign.b", V32x8, [V32x8, V32x8])
            u, x = builder.call(psign, [u, u]), builder.call(psign, [x, u])
        p16 = builder.call(_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", V16x16, [V32x8, V32x8]), [u, x])
        return builder.call(_fn(builder, "llvm.x86.avx2.pmadd.wd", V8x32, [V16x16, V16x16]),
                            [p16, ir.Constant(V16x16, [1] * 16)])
    wide = ir.VectorType(I32, 32)
    p = builder.mul(builder.sext(u, wide) if signed else builder.zext(u, wide), builder.sext(x, wide))
    quads = [_shuffle(builder, p, p, range(j, 32, 4)) for j in range(4)]
    return builder.add(builder.add(quads[0], quads[1]), builder.add(quads[2], quads[3]))


def _madd_scaled(builder, u, x, s0, s1, isa):
    """8 x i32 of _madd(u, x) (u unsigned) times s0 in lanes 0-3 (elements 0..15) and s1 in lanes 4-7: with AVX2
    the scales ride in vpmaddwd's second operand (16-bit), as in ggml, instead of a 32-bit multiply after it."""
    if isa == "portable":
        return builder.mul(_madd(builder, u, x, False, isa), _halves(builder, s0, s1))
    p16 = builder.call(_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", V16x16, [V32x8, V32x8]), [u, x])
    s0, s1 = _splat(builder, s0, 16, I16), _splat(builder, s1, 16, I16)
    scale = _shuffle(builder, s0, s1, list(range(8)) + list(range(24, 32)))  # (16,) i16: 8 x s0, 8 x s1
    return builder.call(_fn(builder, "llvm.x86.avx2.pmadd.wd", V8x32, [V16x16, V16x16]), [p16, scale])


def _reduce_i32(builder, v):
    return builder.call(_fn(builder, "llvm.vector.reduce.add.v8i32", I32, [V8x32]), [v])


def _halves(builder, s0, s1):
    """8 x i32 scale vector: s0 for lanes 0-3 (elements 0..15), s1 for lanes 4-7 (elements 16..31)."""
    return _shuffle(builder, _splat(builder, s0, 8, I32), _splat(builder, s1, 8, I32), [0, 1, 2, 3, 12, 13, 14, 15])


def _field(builder, v, shift, mask):
    n = v.type.count
    return builder.and_(builder.lshr(v, _splat(builder, shift, n)), _splat(builder, mask, n))


_BIT_OF_LANE = [1 << (lane % 8) for lane in range(32)]


def _nibbles_32(builder, arrays, i, qs, qh, hbit):
    """The 32-block layout of Q4_0..Q5_1: byte qs + l holds element l (low nibble) and 16 + l (high nibble),
    plus hbit where bit j of the 4 bytes at qh is set (Q5's fifth bits; qh None: none)."""
    v = arrays.load(i, qs, ir.VectorType(I8, 16))
    u = _shuffle(builder, builder.and_(v, _splat(builder, 15, 16)), builder.lshr(v, _splat(builder, 4, 16)), range(32))
    if qh is None:
        return u
    bits = arrays.load(i, qh, ir.VectorType(I8, 4))
    spread = _shuffle(builder, bits, ir.Constant(bits.type, None), [j // 8 for j in range(32)])
    is_set = builder.icmp_unsigned("!=", builder.and_(spread, ir.Constant(V32x8, _BIT_OF_LANE)),
                                   ir.Constant(V32x8, [0] * 32))
    return builder.or_(u, builder.select(is_set, _splat(builder, hbit, 32), ir.Constant(V32x8, [0] * 32)))


def _lookup_16(builder, u, table, isa):
    """32 x i8: table[u[l]] for indices u[l] in 0..15 (vpshufb with the table in both 128-bit halves on x86;
    otherwise a chain of selects, which any LLVM target compiles)."""
    if isa != "portable":
        tab = ir.Constant(V32x8, [int(v) for v in table] * 2)
        return builder.call(_fn(builder, "llvm.x86.avx2.pshuf.b", V32x8, [V32x8, V32x8]), [tab, u])
    out = ir.Constant(V32x8, [0] * 32)
    for k, v in enumerate(table):
        out = builder.select(builder.icmp_unsigned("==", u, _splat(builder, k, 32)), _splat(builder, int(v), 32), out)
    return out


def _vnni(builder, name, acc, a, b):
    """acc (n x i32) + llvm.x86.avx512.<name> (vpdpbusd: u8 x s8 quads; vpdpwssd: i16 pairs) of a, b; n = 8 is the
    256-bit form (AVX-VNNI's VEX encoding, or AVX-512 VNNI with VL), n = 16 the 512-bit one."""
    vt = acc.type
    fn = _fn(builder, f"llvm.x86.avx512.{name}.{32 * vt.count}", vt, [vt, vt, vt])
    return builder.call(fn, [acc, builder.bitcast(a, vt), builder.bitcast(b, vt)])


def _maddubs(builder, u, x):
    """vpmaddubsw of 32 or 64 bytes: u8 x s8 products summed in pairs, 16 or 32 x i16."""
    n = u.type.count
    name = "llvm.x86.avx2.pmadd.ub.sw" if n == 32 else "llvm.x86.avx512.pmaddubs.w.512"
    return builder.call(_fn(builder, name, ir.VectorType(I16, n // 2), [u.type, u.type]), [u, x])


def _zeros(vt):
    return ir.Constant(vt, [0] * vt.count)


# ---- intrinsics ----

def _intrinsics(core):
    """The two intrinsics around core(builder, arrays, base, tokens) -> [float32 dot per token] (the weight row at
    w[base:], each block unpacked once for all tokens, a separate accumulator per token):
      dot(w, base, qx, dx, sums) -> float32        one token: 1-D activation arrays;
      dots(w, base, qx, dx, sums, ks, out, r)      tokens ks (a tuple of row indices, its length T fixed when
                                                   compiled) of (n_tok, ...) C-contiguous arrays: out[k, r] = the dot
                                                   with token k. Each token's float operations are dot's, in
                                                   dot's order: the results are the same bits."""

    @intrinsic
    def dot(typingctx, row, base, qx, dx, sums):
        sig = types.float32(row, base, qx, dx, sums)

        def codegen(context, builder, sig, args):
            arr = _Arrays(context, builder, sig, args)  # 0 w, 1 base, 2 qx, 3 dx, 4 sums
            return core(builder, arr, arr.int(1), [_Token(arr)])[0]

        return sig, codegen

    return dot, tokens_intrinsic(core)


def tokens_intrinsic(core):
    """dots(w, base, qx, dx, sums, ks, out, r) around core(builder, arrays, base, tokens) -> [one result per token]:
    tokens ks (a tuple of row indices, its length fixed when compiled) of (n_tok, ...) C-contiguous arrays; a
    float32 result goes to out[k, r], a vector of n float32 to out[k, r:r + n]."""

    @intrinsic
    def dots(typingctx, row, base, qx, dx, sums, ks, out, r):
        if not (isinstance(ks, types.UniTuple) and all(a.ndim == 2 and a.layout == "C" for a in (qx, dx, sums, out))):
            return None
        sig = types.void(row, base, qx, dx, sums, ks, out, r)

        def codegen(context, builder, sig, args):
            arr = _Arrays(context, builder, sig, args)  # 0 w, 1 base, 2 qx, 3 dx, 4 sums, 5 ks, 6 out, 7 r
            tk = sig.args[5]
            ks = [context.cast(builder, builder.extract_value(args[5], j), tk.dtype, types.int64)
                  for j in range(tk.count)]
            ys = core(builder, arr, arr.int(1), [_Token(arr, k) for k in ks])
            for k, y in zip(ks, ys, strict=True):
                at = builder.gep(arr.data(6), [builder.add(builder.mul(k, arr.cols(6)), arr.int(7))])
                builder.store(y, builder.bitcast(at, y.type.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return dots


GROUP = 8  # blocks of a 32-block type whose integer sums are gathered into one vector for one float step


def _fold(builder, a, b):
    """a, b: vectors holding k rows of m lanes each (row-major, m even) -> one vector of the 2k rows (a's, then b's)
    of m / 2 lanes: the sums of adjacent lanes. b None: a folded with itself into a vector half as wide."""
    n = a.type.count
    if b is None:
        return builder.add(_shuffle(builder, a, a, range(0, n, 2)), _shuffle(builder, a, a, range(1, n, 2)))
    return builder.add(_shuffle(builder, a, b, range(0, 2 * n, 2)), _shuffle(builder, a, b, range(1, 2 * n, 2)))


def _half_sums(builder, vecs):
    """<2 rows x i32>: lanes 2r and 2r + 1 are the sums of the first and second half of row r, for rows of 8 lanes
    held by vecs (one row per 8-lane vector, or two per 16-lane one): a transposing tree of lane-pair additions.
    The halves are a 32-block's elements 0-15 and 16-31, so the activations' sums per 16 (bs) line up with them."""
    m = 8  # lanes per row
    while len(vecs) > 1 and m > 2:
        vecs, m = [_fold(builder, a, b) for a, b in zip(vecs[::2], vecs[1::2], strict=True)], m // 2
    while len(vecs) > 1:  # two lanes per row already: concatenate
        vecs = [_shuffle(builder, a, b, range(2 * a.type.count)) for a, b in zip(vecs[::2], vecs[1::2], strict=True)]
    v = vecs[0]
    while m > 2:
        v, m = _fold(builder, v, None), m // 2
    return v


def _row_dot_32(size, qs, qh=None, bias=0, m=None, int8=False, table=None, isa=ISA):
    """Intrinsics (_intrinsics) for a 32-block type: block b is `size` bytes, fp16 d at 0, fp16 m at offset m (or
    None), fifth bits at qh (or None), quants at qs (int8 bytes, or nibbles); value d (q - bias) [+ m], or
    d table[q] with a table of 16 int8 levels. qx int8 (n,), dx float32 (n // 32,); sums: for the types with a
    minimum, xs float32 (n // 32,) dx times the block's sum of qx; for the others bs int32 (n // 16,) sums of qx
    per 16 (the VNNI variants multiply unsigned quants u = q + c and take c sum(x) back from the integer sum).

    Every variant computes the exact integer sums sum((q - bias) x) (or sum(table[q] x), sum(q x)) per half block, and
    then the same float operations: per GROUP blocks, their half-block sums gathered into one vector (_half_sums),
    converted and multiplied by d dx into float lanes that accumulate block b % GROUP's halves; lanes summed once
    per row. So every variant gives the same bits, and a token's result does not depend on the tokens it runs
    beside."""
    offset = 128 if int8 or table is not None else bias  # VNNI: u = q + offset is vpdpbusd's unsigned operand
    signed = offset > 0
    utable = None if table is None else [(int(v) + 128) & 255 for v in table]
    wide = isa == "avx512vnni"  # two blocks (64 quants, contiguous in x) per vpdpbusd on 512-bit registers

    def quants(builder, arr, at):
        """32 x i8 of the block at `at`: signed values (AVX2, portable) or u8 values plus `offset` (VNNI)."""
        if int8:
            u = arr.load(0, at(qs), V32x8)
            return builder.xor(u, _splat(builder, 128, 32)) if isa in VNNI else u
        u = _nibbles_32(builder, arr, 0, at(qs), None if qh is None else at(qh), 16)
        if table is not None:
            return _lookup_16(builder, u, utable if isa in VNNI else table, isa)
        if bias and isa not in VNNI:
            u = builder.sub(u, _splat(builder, bias, 32))
        return u

    def core(builder, arr, base, toks):
        fvec, hvec = ir.VectorType(F32, GROUP), ir.VectorType(F32, 2 * GROUP)  # per block, per half block
        accs = [cgutils.alloca_once_value(builder, _zeros(hvec)) for _ in toks]
        acc_mins = [cgutils.alloca_once_value(builder, _zeros(fvec)) for _ in toks]
        fma = {v.count: _fn(builder, f"llvm.fmuladd.v{v.count}f32", v, [v] * 3) for v in (fvec, hvec)}
        c64 = lambda v: ir.Constant(I64, v)  # noqa: E731
        n_blocks = builder.sdiv(arr.cols(2), c64(32))

        def pad(v, lanes):  # a vector widened to `lanes` with zeros
            n = v.type.count
            return v if n == lanes else _shuffle(builder, v, _zeros(v.type), list(range(n)) + [n] * (lanes - n))

        def twice(v):  # (GROUP,) -> (2 GROUP,): each lane for both halves of its block
            return _shuffle(builder, v, v, [j // 2 for j in range(2 * GROUP)])

        def group(ib0, n):
            """Blocks ib0 .. ib0 + n - 1 (n = GROUP, or fewer in a row's tail) into every token's accumulators,
            block ib0 + j's halves in lanes 2j, 2j + 1."""
            us, d16, m16 = [], ir.Constant(ir.VectorType(I16, n), None), ir.Constant(ir.VectorType(I16, n), None)
            for j in range(n):
                o = builder.add(base, builder.mul(builder.add(ib0, c64(j)), c64(size)))
                us.append(quants(builder, arr, lambda k, o=o: builder.add(o, c64(k))))
                d16 = builder.insert_element(d16, arr.load(0, o, I16), ir.Constant(I32, j))
                if m is not None:
                    m16 = builder.insert_element(m16, arr.load(0, builder.add(o, c64(m)), I16), ir.Constant(I32, j))
            half = lambda v: pad(builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), n)),  # noqa: E731
                                               ir.VectorType(F32, n)), GROUP)
            d, f = twice(half(d16)), None if m is None else half(m16)
            per = 2 if wide and n % 2 == 0 else 1  # blocks per integer vector
            if per == 2:
                us = [_shuffle(builder, a, b, range(64)) for a, b in zip(us[::2], us[1::2], strict=True)]
            for tok, acc, acc_min in zip(toks, accs, acc_mins, strict=True):
                vecs = []
                for j, u in enumerate(us):
                    x = tok.load(2, builder.mul(builder.add(ib0, c64(per * j)), c64(32)), u.type)
                    vecs.append(_vnni(builder, "vpdpbusd", _zeros(ir.VectorType(I32, 8 * per)), u, x)
                                if isa in VNNI else _madd(builder, u, x, signed, isa))
                isum = pad(_half_sums(builder, vecs), 2 * GROUP)  # (2 GROUP,) i32: half-block sums of u x
                if isa in VNNI and offset:  # minus offset * the half block's sum of x
                    bs = pad(tok.load(4, builder.mul(ib0, c64(2)), ir.VectorType(I32, 2 * n)), 2 * GROUP)
                    isum = builder.sub(isum, builder.mul(bs, _splat(builder, offset, 2 * GROUP, I32)))
                dx = twice(pad(tok.load(3, ib0, ir.VectorType(F32, n)), GROUP))
                builder.store(builder.call(fma[2 * GROUP], [builder.sitofp(isum, hvec), builder.fmul(d, dx),
                                                            builder.load(acc)]), acc)
                if f is not None:  # the minimums times xs = dx sum(x)
                    xs = pad(tok.load(4, ib0, ir.VectorType(F32, n)), GROUP)
                    builder.store(builder.call(fma[GROUP], [f, xs, builder.load(acc_min)]), acc_min)

        n_full = builder.sdiv(n_blocks, c64(GROUP))
        with cgutils.for_range(builder, n_full) as loop:  # hot loop: GROUP blocks, each unpacked once
            group(builder.mul(loop.index, c64(GROUP)), GROUP)
        ib = cgutils.alloca_once_value(builder, builder.mul(n_full, c64(GROUP)))
        n = GROUP // 2
        while n:  # the row's last n_blocks % GROUP blocks: groups of 4, 2 and 1
            with builder.if_then(builder.icmp_signed("!=", builder.and_(n_blocks, c64(n)), c64(0))):
                group(builder.load(ib), n)
                builder.store(builder.add(builder.load(ib), c64(n)), ib)
            n //= 2
        def total(a):
            v = builder.load(a)
            fn = _fn(builder, f"llvm.vector.reduce.fadd.v{v.type.count}f32", F32, [F32, v.type])
            return builder.call(fn, [ir.Constant(F32, 0.0), v])

        return [builder.fadd(total(acc), total(acc_min)) for acc, acc_min in zip(accs, acc_mins, strict=True)]

    return _intrinsics(core)


TAKE_XS = ("q4_1", "q5_1")  # 32-block kinds whose sums argument is xs (their minimums); the others take bs
_ROW_32 = {"q8_0": dict(size=B.Q8_0_SIZE, qs=B.Q8_0_QS, int8=True),
           "q4_0": dict(size=B.Q4_0_SIZE, qs=B.Q4_0_QS, bias=8),
           "q4_1": dict(size=B.Q4_1_SIZE, qs=B.Q4_1_QS, m=B.Q4_1_M),
           "q5_0": dict(size=B.Q5_0_SIZE, qs=B.Q5_0_QS, qh=B.Q5_0_QH, bias=16),
           "q5_1": dict(size=B.Q5_1_SIZE, qs=B.Q5_1_QS, qh=B.Q5_1_QH, m=B.Q5_1_M),
           "iq4_nl": dict(size=B.IQ4_NL_SIZE, qs=B.IQ4_NL_QS, table=B.KVALUES_IQ4NL)}


((dot_row_q8_0, dot_rows_q8_0), (dot_row_q4_0, dot_rows_q4_0), (dot_row_q4_1, dot_rows_q4_1),
 (dot_row_q5_0, dot_rows_q5_0), (dot_row_q5_1, dot_rows_q5_1), (dot_row_iq4_nl, dot_rows_iq4_nl)) = (
    _row_dot_32(**_ROW_32[k]) for k in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"))


def _k4_scales(builder, arr, at):
    """The 8 sub-block scales and 8 minimums (6 bits each, packed in 12 bytes at `at`) of a Q4_K/Q5_K block as two
    8 x i32 vectors: quant.blocks.scale_min_k4 for all 8 pairs at once (ggml's kmask unpacking on three u32)."""
    u = [arr.load(0, builder.add(at, ir.Constant(I64, 4 * k)), I32) for k in range(3)]
    c = lambda v: ir.Constant(I32, v)  # noqa: E731
    m1, m2, m3 = c(0x3F3F3F3F), c(0x0F0F0F0F), c(0x03030303)
    words = [builder.and_(u[0], m1),  # scales 0-3
             builder.or_(builder.and_(u[2], m2), builder.shl(builder.and_(builder.lshr(u[0], c(6)), m3), c(4))),
             builder.and_(u[1], m1),  # minimums 0-3
             builder.or_(builder.and_(builder.lshr(u[2], c(4)), m2),
                         builder.shl(builder.and_(builder.lshr(u[1], c(6)), m3), c(4)))]
    vec = ir.Constant(ir.VectorType(I32, 4), None)
    for k, w in enumerate(words):
        vec = builder.insert_element(vec, w, ir.Constant(I32, k))
    b = builder.bitcast(vec, ir.VectorType(I8, 16))
    return (builder.zext(_shuffle(builder, b, b, range(8)), V8x32),
            builder.zext(_shuffle(builder, b, b, range(8, 16)), V8x32))


def _scaled(builder, acc, u, x, scales, isa):
    """acc (8 or 16 x i32) + the scaled pair sums of u (u8) x (s8), 32 or 64 quants: pair sum j (elements 2j, 2j+1,
    of vpmaddubsw) times scales[j] (i16 vector, one per pair). VNNI: vpdpwssd; AVX2: vpmaddwd then add."""
    p16 = _maddubs(builder, u, x)
    if isa in VNNI:
        return _vnni(builder, "vpdpwssd", acc, p16, scales)
    return builder.add(acc, builder.call(_fn(builder, "llvm.x86.avx2.pmadd.wd", V8x32, [V16x16, V16x16]),
                                         [p16, scales]))


def _pmaddwd(builder, a, b):
    """vpmaddwd of two 16 x i16 vectors: lane j = a[2j] b[2j] + a[2j + 1] b[2j + 1], 8 x i32."""
    return builder.call(_fn(builder, "llvm.x86.avx2.pmadd.wd", V8x32, [V16x16, V16x16]), [a, b])


def _repeat(builder, v, counts):
    """The lanes of the integer vector v (converted to i16) each repeated counts times: scales per pair sum."""
    v16 = builder.trunc(v, ir.VectorType(I16, v.type.count)) if v.type.element.width > 16 else \
        builder.sext(v, ir.VectorType(I16, v.type.count))
    return _shuffle(builder, v16, v16, [j for j in range(v.type.count) for _ in range(counts)])


def _k_block(builder, arr, kind, o, xo, bsvs, isa, toks):
    """Per token (toks, with bsvs its 16 sums of qx per 16 of the block): (integer sums of sc_s * sum(q x), integer
    corrections) of one 256-block at o of a K-quant as i32 vectors, isum and msum their lane sums: value
    d * isum - dmin * msum (Q4_K, Q5_K) or d * (isum - 32 * msum) (Q6_K). Each unit of quants is unpacked once."""
    wide = isa == "avx512vnni"  # 64 quants per step: two 32-element units that are contiguous in x
    accs = [_zeros(V16x32 if wide else V8x32) for _ in toks]
    at = lambda k: builder.add(o, ir.Constant(I64, k))  # noqa: E731

    def scaled(u, k, scales):  # every token's acc += scaled pair sums of u against its x[xo + k:]
        for j, tok in enumerate(toks):
            x = tok.load(2, builder.add(xo, ir.Constant(I64, k)), u.type)
            accs[j] = _scaled(builder, accs[j], u, x, scales, isa)

    def madd_scaled(u, k, s0, s1):  # the same with AVX2 / portable's _madd_scaled (32 quants, two scales)
        for j, tok in enumerate(toks):
            x = tok.load(2, builder.add(xo, ir.Constant(I64, k)), V32x8)
            accs[j] = builder.add(accs[j], _madd_scaled(builder, u, x, s0, s1, isa))

    if kind == "q6_k":  # element 128h + 32k + l: nibble k // 2 of ql[64h + 32 (k % 2) + l], bits 2k of qh[32h + l]
        for h in range(2):
            qh = arr.load(0, at(B.Q6_K_QH + 32 * h), V32x8)
            sc = arr.load(0, at(B.Q6_K_SCALES + 8 * h), ir.VectorType(I8, 8))  # one per 16 elements
            if wide:  # k = 2p, 2p + 1 at once: ql[64h:64h + 64] nibble p, qh bits 4p.. | 4p + 2..
                ql = arr.load(0, at(B.Q6_K_QL + 64 * h), V64x8)
                qh2 = _shuffle(builder, qh, builder.lshr(qh, _splat(builder, 2, 32)), range(64))
                for p in range(2):
                    u = builder.or_(_field(builder, ql, 4 * p, 15),
                                    builder.shl(_field(builder, qh2, 4 * p, 3), _splat(builder, 4, 64)))
                    scaled(u, 128 * h + 64 * p, _repeat(builder, _shuffle(builder, sc, sc, range(4 * p, 4 * p + 4)), 8))
                continue
            ql = [arr.load(0, at(B.Q6_K_QL + 64 * h + 32 * p), V32x8) for p in range(2)]
            for k in range(4):
                u = builder.or_(_field(builder, ql[k % 2], 4 * (k // 2), 15),
                                builder.shl(_field(builder, qh, 2 * k, 3), _splat(builder, 4, 32)))
                if isa in VNNI:
                    scaled(u, 128 * h + 32 * k, _repeat(builder, _shuffle(builder, sc, sc, [2 * k, 2 * k + 1]), 8))
                    continue
                s = B.Q6_K_SCALES + 8 * h + 2 * k
                s0, s1 = (builder.sext(arr.load(0, at(s + j), I8), I32) for j in range(2))
                madd_scaled(u, 128 * h + 32 * k, s0, s1)
        scales = builder.sext(arr.load(0, at(B.Q6_K_SCALES), ir.VectorType(I8, 16)), bsvs[0].type)
        return accs, [builder.mul(scales, bsv) for bsv in bsvs]  # (a vpmaddwd of (scale, 0) pairs measured slower)
    # chunk c: sub-block 2c low nibbles, 2c + 1 high (Q4_K and Q5_K share d, dmin and the scales' offsets)
    qs, fifth = (B.Q4_K_QS, False) if kind == "q4_k" else (B.Q5_K_QS, True)
    sc, mn = _k4_scales(builder, arr, at(B.Q4_K_SCALES))
    high = arr.load(0, at(B.Q5_K_QH), V32x8) if fifth else None
    for c in range(4):
        v = arr.load(0, at(qs + 32 * c), V32x8)
        us = []
        for half in range(2):
            u = _field(builder, v, 4 * half, 15)
            if fifth:
                u = builder.or_(u, builder.shl(_field(builder, high, 2 * c + half, 1), _splat(builder, 4, 32)))
            us.append(u)
        if wide:  # sub-blocks 2c and 2c + 1 are elements 64c .. 64c + 63: one step
            scaled(_shuffle(builder, us[0], us[1], range(64)), 64 * c,
                   _repeat(builder, _shuffle(builder, sc, sc, [2 * c, 2 * c + 1]), 16))
            continue
        for half in range(2):
            scale = builder.extract_element(sc, ir.Constant(I32, 2 * c + half))
            if isa in VNNI:
                scaled(us[half], 64 * c + 32 * half, _splat(builder, scale, 16, I16))
            else:
                madd_scaled(us[half], 64 * c + 32 * half, scale, scale)
    if isa == "portable":
        pairs = [builder.add(_shuffle(builder, bsv, bsv, range(0, 16, 2)), _shuffle(builder, bsv, bsv, range(1, 16, 2)))
                 for bsv in bsvs]
        return accs, [builder.mul(mn, p) for p in pairs]
    # lane j = mn_j (bs_2j + bs_2j+1) as one vpmaddwd of the sums (exact in i16: |bs| <= 2048) and mn_j twice
    mn2 = _repeat(builder, mn, 2)
    return accs, [_pmaddwd(builder, builder.trunc(bsv, mn2.type), mn2) for bsv in bsvs]


_K_SIZE = {"q4_k": B.Q4_K_SIZE, "q5_k": B.Q5_K_SIZE, "q6_k": B.Q6_K_SIZE}


def _row_dot_k(kind, isa=ISA):
    """Intrinsics (_intrinsics) for a K-quant against Q8_K activations, sums = bs:
    qx int8 (n,), dx float32 (n // 256,), bs int32 (n // 16,) sums of qx per 16."""
    fvec = lambda n: ir.VectorType(F32, n)  # noqa: E731
    # VNNI variants: per-lane float accumulators (one conversion and FMA per block, lanes summed once per row, as
    # ggml does) instead of two horizontal integer sums per block
    n_acc, n_min = (16 if isa == "avx512vnni" else 8), 8

    def core(builder, arr, base, toks):
        zero = lambda n: cgutils.alloca_once_value(builder, ir.Constant(fvec(n), [0.0] * n))  # noqa: E731
        accs = [cgutils.alloca_once_value(builder, ir.Constant(F32, 0.0)) for _ in toks]
        acc_is, acc_ms = [zero(n_acc) for _ in toks], [zero(n_min) for _ in toks]
        n_blocks = builder.sdiv(arr.cols(2), ir.Constant(I64, 256))
        reduce = lambda v: builder.call(_fn(builder, f"llvm.vector.reduce.add.v{v.type.count}i32", I32,  # noqa
                                            [v.type]), [v])

        def fma(a, v, f):  # a (alloca of a float vector) += v (int vector) * f (float scalar)
            n = v.type.count
            fn = _fn(builder, f"llvm.fmuladd.v{n}f32", fvec(n), [fvec(n)] * 3)
            builder.store(builder.call(fn, [builder.sitofp(v, fvec(n)), _splat(builder, f, n, F32),
                                            builder.load(a)]), a)

        with cgutils.for_range(builder, n_blocks) as loop:  # hot loop: a block unpacked once, then each token
            ib = loop.index
            o = builder.add(base, builder.mul(ib, ir.Constant(I64, _K_SIZE[kind])))
            bsvs = [tok.load(4, builder.mul(ib, ir.Constant(I64, 16)), ir.VectorType(I32, 16)) for tok in toks]
            ivs, mvs = _k_block(builder, arr, kind, o, builder.mul(ib, ir.Constant(I64, 256)), bsvs, isa, toks)
            half = lambda k: _half(builder, arr, 0, builder.add(o, ir.Constant(I64, k)))  # noqa: E731
            d, dmin = (half(B.Q6_K_D), None) if kind == "q6_k" else (half(B.Q4_K_D), half(B.Q4_K_DMIN))
            for tok, acc, acc_i, acc_m, iv, mv in zip(toks, accs, acc_is, acc_ms, ivs, mvs, strict=True):
                dxb = tok.load(3, ib, F32)
                if kind == "q6_k":
                    if isa in VNNI:  # sum(q x) - 32 sum(sc bs) in integers (lanes folded to iv's), one float step
                        mv = mv if mv.type.count == iv.type.count else _fold(builder, mv, None)
                        fma(acc_i, builder.sub(iv, builder.shl(mv, _splat(builder, 5, iv.type.count, I32))),
                            builder.fmul(d, dxb))
                    else:
                        isum, msum = reduce(iv), reduce(mv)
                        term = builder.fmul(builder.fmul(d, dxb), builder.sitofp(
                            builder.sub(isum, builder.mul(msum, ir.Constant(I32, 32))), F32))
                        builder.store(builder.fadd(builder.load(acc), term), acc)
                elif isa in VNNI:
                    fma(acc_i, iv, builder.fmul(d, dxb))
                    fma(acc_m, mv, builder.fmul(dmin, dxb))
                else:
                    isum, msum = reduce(iv), reduce(mv)
                    term = builder.fmul(dxb, builder.fsub(builder.fmul(d, builder.sitofp(isum, F32)),
                                                          builder.fmul(dmin, builder.sitofp(msum, F32))))
                    builder.store(builder.fadd(builder.load(acc), term), acc)
        if isa not in VNNI:
            return [builder.load(acc) for acc in accs]
        fsum = lambda a, n: builder.call(_fn(builder, f"llvm.vector.reduce.fadd.v{n}f32", F32,  # noqa: E731
                                             [F32, fvec(n)]), [ir.Constant(F32, 0.0), builder.load(a)])
        if kind == "q6_k":
            return [fsum(acc_i, n_acc) for acc_i in acc_is]
        return [builder.fsub(fsum(acc_i, n_acc), fsum(acc_m, n_min))
                for acc_i, acc_m in zip(acc_is, acc_ms, strict=True)]

    return _intrinsics(core)


(dot_row_q4_k, dot_rows_q4_k), (dot_row_q5_k, dot_rows_q5_k), (dot_row_q6_k, dot_rows_q6_k) = (
    _row_dot_k(k) for k in ("q4_k", "q5_k", "q6_k"))


def row_dot_intrinsic(kind: str, isa: str, tokens: bool = False):
    """The row-dot intrinsic of `kind` ("q8_0" ... "iq4_nl", "q4_k", "q5_k", "q6_k") emitted for variant `isa`
    (tests compare the variants the host runs): the one-token `dot`, or with `tokens` the several-token `dots`."""
    pair = _row_dot_k(kind, isa) if kind in _K_SIZE else _row_dot_32(**_ROW_32[kind], isa=isa)
    return pair[1] if tokens else pair[0]


@intrinsic
def dot_bytes(typingctx, w, a, s1, m1, b, s2, m2, s3, x, xo, sc0, sc1):
    """u[l] = ((w[a+l] >> s1) & m1) | (((w[b+l] >> s2) & m2) << s3), l < 32 (m2 = 0: no second field; b must
    still be a valid offset). Returns sc0 * sum(u x[xo:xo+16]) + sc1 * sum(u x[xo+16:xo+32])."""
    sig = types.int32(w, a, s1, m1, b, s2, m2, s3, x, xo, sc0, sc1)

    def codegen(context, builder, sig, args):
        arr = _Arrays(context, builder, sig, args)
        a, s1, m1, b, s2, m2, s3, xo, sc0, sc1 = (arr.int(i) for i in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11))
        u = builder.or_(_field(builder, arr.load(0, a, V32x8), s1, m1),
                        builder.shl(_field(builder, arr.load(0, b, V32x8), s2, m2), _splat(builder, s3, 32)))
        return _reduce_i32(builder, _madd_scaled(builder, u, arr.load(8, xo, V32x8), sc0, sc1, ISA))

    return sig, codegen
