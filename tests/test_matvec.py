"""QMatrix kernels (float and int paths) against the oracle gguf.quants.dequantize(W) @ x in float64.

Error measure: per output, |y - ref| / (|W| @ |x|), the natural scale of the rounding error of a dot
product (it does not blow up when the result cancels to ~0).
- float path: float32 accumulation over <= 8960 terms -> bound 1e-5 (measured 4e-8).
- int path: the kernel must equal W @ dequant(Q8(x)) to the same 1e-5 (the integer dots are exact);
  versus the unquantized x the Q8 activation rounding (|x - Q8(x)| <= block max / 254) dominates:
  bound 1e-2 (measured 2.4e-3; exact-kernel check measured 4e-8).
"""

import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGMLQuantizationType

from quant import QMatrix, QuantTypeError
from quant.activation import quantize_q8_0, quantize_q8_k
from quant.types import GGMLType, type_info
from runtime.gguf import GGUFFile

WEIGHT_TYPES = [t for t in GGMLType if t != GGMLType.Q8_K]
FLOAT_TOL = 1e-5
Q8_TOL = 1e-2
# byte offsets of the fp16 scale fields (d, m, dmin) in each block, given sane values in random blocks
F16_FIELDS = {GGMLType.Q4_0: [0], GGMLType.Q4_1: [0, 2], GGMLType.Q5_0: [0], GGMLType.Q5_1: [0, 2],
              GGMLType.Q8_0: [0], GGMLType.Q2_K: [80, 82], GGMLType.Q3_K: [108], GGMLType.Q4_K: [0, 2],
              GGMLType.Q5_K: [0, 2], GGMLType.Q6_K: [208], GGMLType.IQ4_NL: [0]}


def random_raw(rng, qtype, n_rows, n_cols) -> np.ndarray:
    """(n_rows, row_bytes) uint8: random quant bits with fp16 scales in [0.005, 0.015] (or random floats)."""
    if qtype == GGMLType.F32:
        return rng.standard_normal((n_rows, n_cols), np.float32).view(np.uint8)
    if qtype == GGMLType.F16:
        return rng.standard_normal((n_rows, n_cols)).astype(np.float16).view(np.uint8)
    if qtype == GGMLType.BF16:
        bits = rng.standard_normal((n_rows, n_cols), np.float32).view(np.uint32) >> 16
        return bits.astype(np.uint16).view(np.uint8)
    info = type_info(qtype)
    nb = n_cols // info.block_size
    raw = rng.integers(0, 256, (n_rows, nb, info.type_size), dtype=np.uint8)
    for f in F16_FIELDS[qtype]:
        scale = rng.uniform(0.005, 0.015, (n_rows, nb, 1)).astype(np.float16)
        raw[:, :, f:f + 2] = scale.view(np.uint8)
    return raw.reshape(n_rows, -1)


def oracle(raw, qtype) -> np.ndarray:  # (n_rows, n_cols) float64
    return quants.dequantize(raw, GGMLQuantizationType(int(qtype))).astype(np.float64)


def rel_err(y, W, X) -> float:
    """max |y - X W^T| / (|X| |W|^T); y (n_tok, n_rows), W (n_rows, n_cols), X (n_tok, n_cols)."""
    X = X.astype(np.float64)
    return float(np.max(np.abs(y - X @ W.T) / (np.abs(X) @ np.abs(W).T + 1e-30)))


def dequant_q8(qtype, X) -> np.ndarray:  # the activation the int path actually multiplies, float64
    q, d, size = (*quantize_q8_k(X), 256) if type_info(qtype).block_size == 256 else (*quantize_q8_0(X), 32)
    return q.astype(np.float64) * np.repeat(d, size, axis=-1)


@pytest.fixture(scope="module")
def cases():
    """Per type: (raw, float64 oracle weights, activations (17, n_cols)); odd row count 37."""
    rng = np.random.default_rng(7)
    out = {}
    for t in WEIGHT_TYPES:
        n_cols = 96 if t in (GGMLType.Q4_0, GGMLType.F16) else 512  # 96: not a multiple of 256
        raw = random_raw(rng, t, 37, n_cols)
        out[t] = raw, oracle(raw, t), rng.standard_normal((17, n_cols), np.float32)
    return out


@pytest.mark.parametrize("path", ["float", "int"])
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matvec_matmul(cases, qtype, path):
    raw, W, X = cases[qtype]
    m = QMatrix(raw, qtype, W.shape[1], path=path)
    exact = path == "float" or qtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)
    for n_tok in (1, 3, 17, min(m.sgemm_tokens, 300)):
        Xt = X[np.arange(n_tok) % len(X)]
        y = m.matmul(Xt)
        assert y.shape == (n_tok, 37) and y.dtype == np.float32
        if exact or n_tok >= m.sgemm_tokens:  # the int path's large batches: dequantized tiles and sgemm
            assert rel_err(y, W, Xt) < FLOAT_TOL
        else:
            assert rel_err(y, W, dequant_q8(qtype, Xt)) < FLOAT_TOL  # integer dots exact
            assert rel_err(y, W, Xt) < Q8_TOL  # activation rounding only
    y = m.matvec(X[5])
    assert y.shape == (37,)
    np.testing.assert_allclose(y, m.matmul(X[5:6])[0], rtol=1e-6, atol=1e-6)
    out = np.full(37, np.nan, np.float32)
    assert m.matvec(X[5], out=out) is out and np.array_equal(out, y)


@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_dequantize_and_get_rows(cases, qtype):
    raw, W, _ = cases[qtype]
    m = QMatrix(raw, qtype, W.shape[1])
    np.testing.assert_array_equal(m.dequantize(), W.astype(np.float32))
    np.testing.assert_array_equal(m.get_rows([36, 0, 5, 5]), W[[36, 0, 5, 5]].astype(np.float32))


def test_q8_0_activation_matches_gguf(rng):
    x = (rng.standard_normal((3, 256)) * rng.uniform(0.01, 10, (3, 1))).astype(np.float32)
    x[0, :32] = 0  # an all-zero block
    blocks = quants.quantize(x, GGMLQuantizationType.Q8_0).reshape(3, 8, 34)
    q, d = quantize_q8_0(x)
    np.testing.assert_array_equal(d, blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32))
    np.testing.assert_array_equal(q.reshape(3, 8, 32), blocks[..., 2:].view(np.int8))


def test_q8_k_activation(rng):
    x = rng.standard_normal((2, 512)).astype(np.float32)
    x[1, 256:] = 0
    q, d = quantize_q8_k(x)
    assert np.all(q == np.round(q)) and q.min() >= -128 and q.max() <= 127
    err = np.abs(q * np.repeat(d, 256, axis=-1) - x)
    assert np.all(err <= np.abs(np.repeat(d, 256, axis=-1)) * 0.5001 + 1e-12)
    assert np.all(np.abs(q[0]).reshape(2, 256).max(axis=1) == 127) and np.all(q[1, 256:] == 0)


def test_errors(cases):
    raw, W, X = cases[GGMLType.Q4_K]
    with pytest.raises(QuantTypeError):
        QMatrix(raw[:, :-1], GGMLType.Q4_K, 512)
    with pytest.raises(QuantTypeError):
        QMatrix(raw, GGMLType.Q8_K, 512)
    with pytest.raises(QuantTypeError):
        QMatrix(raw, 99, 512)
    with pytest.raises(ValueError, match="path"):
        QMatrix(raw, GGMLType.Q4_K, 512, path="fast")
    m = QMatrix(raw, GGMLType.Q4_K, 512)
    with pytest.raises(ValueError, match="columns"):
        m.matvec(X[0, :256])
    with pytest.raises(ValueError, match="columns"):
        m.matmul(X[0])
    with pytest.raises(ValueError, match="out"):
        m.matvec(X[0], out=np.empty(5, np.float32))
    with pytest.raises(IndexError):
        m.get_rows([37])


def test_no_copy_of_memmap(model_path):
    with GGUFFile(model_path("smollm2-135m-instruct")) as f:
        t = f.tensors["blk.0.ffn_down.weight"]
        m = QMatrix(t.raw, t.qtype, t.shape[1])
        assert np.shares_memory(m.raw, t.raw)


REAL_MODELS = ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]


def real_tensors(model_path):
    """One 2-D tensor (first 203 rows) per weight type present in the real models."""
    seen = {}
    for name in REAL_MODELS:
        with GGUFFile(model_path(name)) as f:
            for t in f.tensors.values():
                if len(t.shape) == 2 and t.qtype not in seen:
                    seen[t.qtype] = (name, t.name, np.array(t.raw[:203]), t.shape[1])
    return seen


def test_real_model_tensors(model_path, rng):
    found = real_tensors(model_path)
    assert {GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K} <= set(found)
    for qtype, (model, name, raw, n_cols) in found.items():
        W = oracle(raw, qtype)
        X = rng.standard_normal((3, n_cols), np.float32)
        for path in ("float", "int"):
            m = QMatrix(raw, qtype, n_cols, path=path)
            tol = FLOAT_TOL if path == "float" else Q8_TOL
            assert rel_err(m.matvec(X[0])[None], W, X[:1]) < tol, (model, name, path)
            assert rel_err(m.matmul(X), W, X) < tol, (model, name, path)


# ---- the integer kernels' instruction-set variants (quant.jit.isa): each one the host runs against the portable one

INT_KINDS = {"q8_0": GGMLType.Q8_0, "q4_0": GGMLType.Q4_0, "q4_1": GGMLType.Q4_1, "q5_0": GGMLType.Q5_0,
             "q5_1": GGMLType.Q5_1, "iq4_nl": GGMLType.IQ4_NL, "q4_k": GGMLType.Q4_K, "q5_k": GGMLType.Q5_K,
             "q6_k": GGMLType.Q6_K}


def test_isa_choice_from_features(monkeypatch, capsys):
    from quant.jit import isa

    zen4 = {"avx2": True, "avx512f": True, "avx512bw": True, "avx512vl": True, "avx512vnni": True, "avxvnni": False}
    assert isa.supported(zen4) == ["avx512vnni", "avxvnni", "avx2", "portable"]
    assert isa.supported({"avx2": True, "avxvnni": True, "avx512f": False}) == ["avxvnni", "avx2", "portable"]
    assert isa.supported({"avx2": True}) == ["avx2", "portable"] and isa.supported({}) == ["portable"]
    best = isa.supported()[0]
    assert isa.choose({}) == best and isa.choose({"LLAMBA_ISA": "portable"}) == "portable"
    monkeypatch.setattr(isa, "supported", lambda: ["avx2", "portable"])  # never one the host lacks
    assert isa.choose({"LLAMBA_ISA": "avx512vnni"}) == "avx2" and "not supported" in capsys.readouterr().err


def _variant_rows(kind, variant):
    """A jitted loop calling the row-dot intrinsic of `kind` emitted for `variant` on every row."""
    from numba import njit

    from quant.kernels import simd

    dot = simd.row_dot_intrinsic(kind, variant)

    @njit
    def rows(w, row_bytes, qx, dx, sums, out):
        for r in range(out.shape[0]):
            out[r] = dot(w, r * row_bytes, qx, dx, sums)

    return rows


def _run_variant(rows, raw, qx, dx, bs, xs, kind):
    from quant.kernels import simd

    out = np.empty(raw.shape[0], np.float32)
    rows(raw.reshape(-1), raw.shape[1], qx, dx, xs if kind in simd.TAKE_XS else bs, out)
    return out


@pytest.mark.parametrize("kind", list(INT_KINDS))
def test_isa_variants_give_identical_integer_sums(kind):
    """Unit block scales (fp16 1.0 in every float field, activation scales 1) and activations small enough that
    every partial sum stays below 2^24 (|x| <= 3 for the K-quants, whose sub-block scales reach 128): every
    product and partial sum is an integer exactly representable in float32, whatever the order of the float
    accumulation, so variants that compute the same integer sums give the same bits. Then realistic scales: each
    variant against the oracle W @ dequant(Q8(x))."""
    from quant.activation import quantize_activations
    from quant.blocks import FLOAT_FIELDS
    from quant.jit import isa

    qtype = INT_KINDS[kind]
    k_quant = type_info(qtype).block_size == 256
    variants = isa.supported()
    assert variants[-1] == "portable" and isa.ISA in variants
    rng = np.random.default_rng(11)
    for n_cols in ((256, 512) if k_quant else (32, 96, 352, 480)):  # 1, 3, 11 and 15 blocks (tails of 1-7)
        raw = random_raw(rng, qtype, 9, n_cols)
        unit = raw.reshape(9, -1, type_info(qtype).type_size).copy()
        for off in FLOAT_FIELDS[qtype]:
            unit[:, :, off:off + 2] = np.array([1.0], np.float16).view(np.uint8)
        unit = unit.reshape(9, -1)
        qx = rng.integers(-3, 4, n_cols).astype(np.int8) if k_quant else rng.integers(-127, 128, n_cols).astype(np.int8)
        bs = qx.reshape(-1, 16).astype(np.int32).sum(axis=1).astype(np.int32)
        xs = bs.reshape(-1, 2).sum(axis=1).astype(np.float32)
        dx = np.ones(n_cols // type_info(qtype).block_size, np.float32)
        X = rng.standard_normal((1, n_cols), np.float32)
        aq = quantize_activations(X, type_info(qtype).block_size)
        W = oracle(raw, qtype)
        results, real = {}, {}
        for v in variants:
            rows = _variant_rows(kind, v)
            results[v] = _run_variant(rows, unit, qx, dx, bs, xs, kind)
            real[v] = _run_variant(rows, raw, aq[0][0], aq[1][0], aq[2][0], aq[3][0], kind)
            assert rel_err(real[v][None], W, dequant_q8(qtype, X)) < FLOAT_TOL, (v, n_cols)
        for v in variants:
            np.testing.assert_array_equal(results[v], results["portable"], err_msg=f"{kind} {v} n={n_cols}")
            if not k_quant:  # the same float operations on the same integer sums: the same bits at any scale
                np.testing.assert_array_equal(real[v], real["portable"], err_msg=f"{kind} {v} n={n_cols}")


# ---- several tokens per weight row (simd's `dots`, int_dot.row_dots): the same bits as one token at a time

def _variant_token_groups(kind, variant):
    """A jitted loop over rows calling the several-token intrinsic of `kind` for `variant` on tokens 4 at a time,
    then 3, 2 or 1 (int_path._matmul's grouping, and a tuple of one)."""
    from numba import njit

    from quant.kernels import simd

    dots = simd.row_dot_intrinsic(kind, variant, tokens=True)

    @njit
    def rows(w, row_bytes, qx, dx, sums, out):
        n_tok = qx.shape[0]
        for r in range(out.shape[1]):
            k = 0
            while k + 4 <= n_tok:
                dots(w, r * row_bytes, qx, dx, sums, (k, k + 1, k + 2, k + 3), out, r)
                k += 4
            if k + 3 == n_tok:
                dots(w, r * row_bytes, qx, dx, sums, (k, k + 1, k + 2), out, r)
                k += 3
            if k + 2 <= n_tok:
                dots(w, r * row_bytes, qx, dx, sums, (k, k + 1), out, r)
                k += 2
            if k < n_tok:
                dots(w, r * row_bytes, qx, dx, sums, (k,), out, r)

    return rows


@pytest.mark.parametrize("kind", list(INT_KINDS))
def test_several_tokens_equal_one_token_bitwise(kind):
    """Every variant the host runs: a weight row against 1..15 tokens (groups of 4, 3, 2, 1) gives exactly the bits of
    the one-token row dot per token (the server's batched decode equals a single decode)."""
    from quant.activation import quantize_activations
    from quant.jit import isa
    from quant.kernels import simd

    qtype = INT_KINDS[kind]
    k_quant = type_info(qtype).block_size == 256
    rng = np.random.default_rng(13)
    n_cols = 512 if k_quant else 352
    raw = random_raw(rng, qtype, 11, n_cols)
    X = rng.standard_normal((15, n_cols), np.float32) * rng.uniform(0.1, 10, (15, 1)).astype(np.float32)
    qx, dx, bs, xs = quantize_activations(X, type_info(qtype).block_size)
    sums = xs if kind in simd.TAKE_XS else bs
    for v in isa.supported():
        one, many = _variant_rows(kind, v), _variant_token_groups(kind, v)
        want = np.stack([_run_variant(one, raw, qx[k], dx[k], bs[k], xs[k], kind) for k in range(15)])
        for n_tok in range(1, 16):
            got = np.full((n_tok, raw.shape[0]), np.nan, np.float32)
            many(raw.reshape(-1), raw.shape[1], qx[:n_tok], dx[:n_tok], sums[:n_tok], got)
            assert np.array_equal(got, want[:n_tok]), (kind, v, n_tok)


@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matmul_rows_equal_matvec_bitwise(cases, qtype):
    """QMatrix.matmul below the sgemm switch: each token's row is exactly its matvec (every type, both paths)."""
    raw, W, X = cases[qtype]
    for path in ("float", "int"):
        m = QMatrix(raw, qtype, W.shape[1], path=path)
        for n_tok in (2, 3, 5, 7, m.sgemm_tokens - 1):
            Xt = X[np.arange(n_tok) % len(X)]
            y = m.matmul(Xt)
            assert np.array_equal(y, np.stack([m.matvec(x) for x in Xt])), (path, n_tok)


@pytest.mark.parametrize("path", ["int", "float"])
def test_matrix_group_equals_its_matrices_bitwise(path):
    """MatrixGroup (Q, K, V of three types sharing an input, one kernel call on the integer path): every output is
    exactly its own matrix's matvec / matmul, for 1 token up to the sgemm switch and past it."""
    from quant.matrix import MatrixGroup

    rng = np.random.default_rng(5)
    mats = [QMatrix(random_raw(rng, t, n, 512), t, 512, path=path)
            for t, n in ((GGMLType.Q5_0, 37), (GGMLType.Q4_K, 16), (GGMLType.Q6_K, 21))]
    group = MatrixGroup(mats)
    assert group.fused == (path == "int")
    for n_tok in (1, 2, 3, 5, 8, group.sgemm_tokens - 1, group.sgemm_tokens):
        X = rng.standard_normal((n_tok, 512), np.float32)
        outs = [np.full((n_tok, m.n_rows), np.nan, np.float32) for m in mats]
        group(X, outs)
        for m, y in zip(mats, outs, strict=True):
            want = m.matvec(X[0])[None] if n_tok == 1 else m.matmul(X)
            assert np.array_equal(y, want), (path, m.qtype.name, n_tok)
        if n_tok < group.sgemm_tokens:
            assert all(np.array_equal(y[k], m.matvec(X[k])) for m, y in zip(mats, outs, strict=True)
                       for k in range(n_tok))


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_forward_batch_equals_single_decode_bitwise(model_path, name):
    """Model.forward_batch: 6 sequences (prompts of different lengths) decoded in one step give exactly the logits
    of each decoded alone (SmolLM2: Q4_1 / Q8_0; Qwen2.5-0.5B: Q5_0, Q8_0, Q4_K, Q6_K)."""
    from runtime.model import load_model

    model = load_model(model_path(name), n_ctx=64)
    prompts = [[1 + 7 * i + j for j in range(2 + i)] for i in range(6)]
    nxt = np.array([100 + 11 * i for i in range(6)], np.int32)
    single, batch = [model.new_cache(64) for _ in prompts], [model.new_cache(64) for _ in prompts]
    for p, a, b in zip(prompts, single, batch, strict=True):
        model.forward(np.array(p, np.int32), 0, a)
        model.forward(np.array(p, np.int32), 0, b)
    got = model.forward_batch(nxt, [len(p) for p in prompts], batch)
    for i, p in enumerate(prompts):
        want = model.forward(nxt[i:i + 1], len(p), single[i])
        assert np.array_equal(got[i], want), (name, i)
