"""Interleaved rows (quant.interleave) and their 16-row kernels (quant.kernels.interleaved), against the oracle
gguf.quants.dequantize(W) @ dequant(Q8_K(x)) in float64 (test_matvec's error measure), on every instruction-set
variant the host runs; and the runtime's use of them (QMatrix on first use, the model's repack switch)."""

import numpy as np
import pytest
from test_matvec import FLOAT_TOL, dequant_q8, oracle, random_raw, rel_err

from quant import QMatrix
from quant.activation import quantize_activations
from quant.interleave import ROWS, deinterleave, interleavable, interleave
from quant.kernels.int_path import INTERLEAVED
from quant.types import GGMLType, type_info

TYPES = [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1]
F16 = {GGMLType.Q4_K: (0, 2), GGMLType.Q6_K: (208,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_1: (0, 2)}  # else (0,)
FIFTH = (GGMLType.Q5_0, GGMLType.Q5_1)


def _activations(qtype, X):
    """(qx, dx, sums) the kernels take: Q8_K or Q8_0 rows, sums bs (xs for the types with a minimum)."""
    qx, dx, bs, xs = quantize_activations(X, type_info(qtype).block_size)
    return qx, dx, (xs if qtype in (GGMLType.Q4_1, GGMLType.Q5_1) else bs)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_interleave_moves_every_byte(qtype):
    """The same bytes, moved: deinterleave gives GGML's rows back; each fp16 scale and each 4-byte word of a row
    lies in its group's lane (the row's index in its group)."""
    rng = np.random.default_rng(1)
    raw = random_raw(rng, qtype, 48, 512)
    groups = interleave(raw, qtype)
    assert groups.shape == (3, ROWS * raw.shape[1]) and groups.dtype == np.uint8
    assert np.array_equal(deinterleave(groups, qtype, 512), raw)
    size = type_info(qtype).type_size
    block = groups[1, size * ROWS:2 * size * ROWS]  # group 1 (rows 16-31), block 1
    row = raw[16 + 5, size:2 * size]  # its row 5
    fields = F16.get(qtype, (0,))
    for i, at in enumerate(fields):  # the fp16 fields of 16 rows side by side
        assert bytes(block[2 * ROWS * i + 2 * 5:2 * ROWS * i + 2 * 5 + 2]) == bytes(row[at:at + 2])
    words = block[2 * ROWS * len(fields):].view(np.uint32).reshape(-1, ROWS)[:, 5]  # row 5's lane
    first = 0 if qtype == GGMLType.Q6_K else 2 * len(fields)  # Q6_K: every word but d's, in another order
    ggml = row[first:first + 4 * len(words)].view(np.uint32)
    if qtype in FIFTH:  # the fifth bits reordered within their word
        assert bin(int(words[0])).count("1") == bin(int(ggml[0])).count("1")
        words, ggml = words[1:], ggml[1:]
    assert sorted(words) == sorted(ggml)


def test_what_is_interleaved():
    assert interleavable(GGMLType.Q4_K, 32) and interleavable("Q6_K", 16) and interleavable(GGMLType.Q5_0, 32)
    assert not interleavable(GGMLType.Q4_K, 40)  # not whole groups: GGML's rows
    assert not interleavable(GGMLType.IQ4_NL, 32) and not interleavable(GGMLType.Q5_K, 32)
    assert not interleavable(GGMLType.F16, 32) and not interleavable(GGMLType.Q4_K, 0)


def _variant_groups(qtype, variant):
    """A jitted loop calling the 16-row intrinsic of `qtype` emitted for `variant` on every group, tokens 4 at a time,
    then 2, then 1."""
    from numba import njit

    from quant.kernels.interleaved import dots_intrinsic

    dots = dots_intrinsic(qtype, variant)

    @njit
    def run(w, group_bytes, qx, dx, sums, out):
        n_tok = qx.shape[0]
        for g in range(out.shape[1] // 16):
            k = 0
            while k + 4 <= n_tok:
                dots(w, g * group_bytes, qx, dx, sums, (k, k + 1, k + 2, k + 3), out, 16 * g)
                k += 4
            if k + 2 <= n_tok:
                dots(w, g * group_bytes, qx, dx, sums, (k, k + 1), out, 16 * g)
                k += 2
            if k < n_tok:
                dots(w, g * group_bytes, qx, dx, sums, (k,), out, 16 * g)

    return run


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_variants_against_the_oracle_and_each_other(qtype):
    """Every variant: within FLOAT_TOL of W @ dequant(Q8_K(x)) (the integer sums are exact), the same bits as the
    portable variant (the same integer sums, then the same float steps), and a token's outputs the same bits
    whichever tokens share its call (1..7 tokens; the batched decode of several sequences equals a single one)."""
    from quant.jit import isa

    rng = np.random.default_rng(3)
    raw = random_raw(rng, qtype, 32, 768)
    groups = interleave(raw, qtype)
    X = rng.standard_normal((7, 768), np.float32) * rng.uniform(0.1, 10, (7, 1)).astype(np.float32)
    qx, dx, sums = _activations(qtype, X)
    W, Xq = oracle(raw, qtype), dequant_q8(qtype, X)
    results = {}
    for v in isa.supported():
        run = _variant_groups(qtype, v)
        alone = np.stack([_call(run, groups, qx[k:k + 1], dx[k:k + 1], sums[k:k + 1])[0] for k in range(7)])
        for n_tok in range(1, 8):
            y = _call(run, groups, qx[:n_tok], dx[:n_tok], sums[:n_tok])
            assert np.array_equal(y, alone[:n_tok]), (v, n_tok)
        assert rel_err(alone, W, Xq) < FLOAT_TOL, v
        results[v] = alone
    for v, y in results.items():
        assert np.array_equal(y, results["portable"]), v


def _call(run, groups, qx, dx, sums):
    out = np.full((qx.shape[0], groups.shape[0] * ROWS), np.nan, np.float32)
    run(groups.reshape(-1), groups.shape[1], qx, dx, sums, out)
    return out


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_qmatrix_interleaves_on_first_use(qtype):
    """QMatrix (integer path): a type with 16-row kernels is interleaved at its first product, once, and calls
    on_interleaved with its GGML rows; its products stay within FLOAT_TOL of the oracle for 1..9 tokens, as the
    same matrix left in GGML's layout (interleave=False); a row count that is not whole groups is left as is."""
    rng = np.random.default_rng(4)
    raw = random_raw(rng, qtype, 48, 512)
    seen = []
    m = QMatrix(raw, qtype, 512, path="int", on_interleaved=seen.append)
    rows = QMatrix(raw, qtype, 512, path="int", interleave=False)
    assert m._blocks is None  # nothing copied before it is used
    W = oracle(raw, qtype)
    for n_tok in (1, 2, 5, 9):
        X = rng.standard_normal((n_tok, 512), np.float32)
        y = m.matvec(X[0])[None] if n_tok == 1 else m.matmul(X)
        assert rel_err(y, W, dequant_q8(qtype, X)) < FLOAT_TOL
        assert np.allclose(y, rows.matmul(X), rtol=0, atol=1e-5 * np.abs(y).max())
    blocks, code = m.blocks
    assert code == int(qtype) | INTERLEAVED and blocks.shape == (3, ROWS * raw.shape[1])
    assert len(seen) == 1 and seen[0] is m.raw
    assert rows.blocks == (rows.raw, int(qtype))
    odd = QMatrix(raw[:40], qtype, 512, path="int")
    odd.matvec(np.ones(512, np.float32))
    assert odd.blocks[1] == int(qtype)


def test_release_keeps_the_bytes(model_path):
    """GGUFFile.release drops a tensor's pages from the process (madvise): reading it again gives the same bytes."""
    from runtime.gguf import GGUFFile

    with GGUFFile(model_path("qwen2.5-coder-0.5b-instruct")) as g:
        t = g.tensors["blk.0.ffn_down.weight"]
        before = t.raw.copy()
        g.release(t.raw)
        g.release(before)  # not of the map: nothing happens
        assert np.array_equal(t.raw, before)


def test_model_repack_switch(model_path, monkeypatch):
    """load_model(repack=False) leaves every matrix in GGML's layout; the default's Model.repack() interleaves
    Qwen2.5-0.5B's layer matrices (Q5_0, Q8_0, Q4_K, Q6_K). The two differ by float32 rounding per dot (its float
    steps are grouped differently), which 24 layers amplify (a relative noise of 5e-7 on the matrix outputs moves
    these logits as much): they agree as closely as test_int_path asks of either against transformers, which the
    default (interleaved) model is held to there."""
    import quant.matrix
    from runtime.layers import matrices
    from runtime.model import load_model

    monkeypatch.setattr(quant.matrix, "DEFAULT_PATH", "int")  # (the tests' default is the float path)
    path = model_path("qwen2.5-coder-0.5b-instruct")
    ids = np.arange(100, 120)
    logits, codes = {}, {}
    for repack in (True, False):
        model = load_model(path, n_ctx=64, repack=repack)
        assert all(m._blocks is None for layer in model.layers for m in matrices(layer.w))  # nothing copied yet
        model.repack()
        logits[repack] = model.forward(ids, 0, model.new_cache(), all_logits=True)
        codes[repack] = {m.blocks[1] & INTERLEAVED for layer in model.layers for m in matrices(layer.w)}
        model.close()
    assert codes == {True: {INTERLEAVED}, False: {0}}
    a, b = logits[True], logits[False]
    assert min(np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)) > 0.998
