"""Perplexity as llama.cpp's `llama-perplexity` measures it, and the real-weights requantization round trip.

Oracles: transformers computing the mean NLL over the same chunks of token ids on the same GGUF
(dequantized to float32); for chunking and scoring, torch's log_softmax over a synthetic model whose
logits are known. The round trip checks our quantizers on real weights: a shipped Q4_K_M file is
dequantized to F16, re-quantized by llamba, and must keep the original file's perplexity.
"""

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_reference import reference_model

from runtime.convert.requantize import quantize_gguf
from runtime.errors import ContextOverflowError, LlambaError
from runtime.eval.perplexity import kernel_path, kl_divergence, perplexity, text_perplexity
from runtime.gguf import GGUFFile
from runtime.model import load_model
from runtime.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXT_PATH = ROOT / "tests" / "data" / "perplexity.txt"


def _tool():
    spec = importlib.util.spec_from_file_location("perplexity_tool", ROOT / "tools" / "perplexity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_nll(logits: torch.Tensor, chunks: torch.Tensor) -> np.ndarray:
    """llama.cpp's scoring written independently in torch: logits (n_chunks, n_ctx, n_vocab) -> (n_scored,)."""
    n_ctx = chunks.shape[1]
    first = n_ctx // 2
    logp = torch.log_softmax(logits[:, first:n_ctx - 1].double(), dim=-1)  # (n_chunks, n_scored/chunk, n_vocab)
    target = chunks[:, first + 1:]  # (n_chunks, n_scored/chunk)
    return -logp.gather(-1, target[..., None])[..., 0].reshape(-1).numpy()


# ---- chunking and scoring on a synthetic model -------------------------------------------------------------------

class _TableModel:
    """logits of a token = a fixed random row per (token id, position): checks positions and chunk contents."""

    def __init__(self, n_vocab: int, n_ctx: int, rng):
        self.n_vocab, self.n_ctx = n_vocab, n_ctx
        self.table = rng.standard_normal((n_vocab, n_vocab)).astype(np.float32) * 3  # (n_vocab, n_vocab)
        self.pos_bias = rng.standard_normal((n_ctx, n_vocab)).astype(np.float32)  # (n_ctx, n_vocab)
        self.calls = []

    def new_cache(self, n_ctx=None):
        return None  # the table needs no cache

    def forward(self, tokens, pos, cache=None, all_logits=False):
        tokens = np.asarray(tokens)
        self.calls.append((tokens.copy(), pos))
        return self.table[tokens] + self.pos_bias[pos:pos + tokens.size]  # (n, n_vocab)


@pytest.mark.parametrize("bos_id", [None, 7])
def test_chunks_and_scored_tokens_follow_llama_cpp(rng, bos_id):
    n_ctx, n_vocab = 16, 50
    model = _TableModel(n_vocab, 32, rng)
    tokens = rng.integers(0, n_vocab, 3 * n_ctx + 5)  # 3 full chunks, the partial rest is dropped
    seen = []
    result = perplexity(model, tokens, n_ctx, bos_id=bos_id, on_chunk=lambda i, p: seen.append((i, p)))

    chunks = tokens[:3 * n_ctx].reshape(3, n_ctx).copy()
    if bos_id is not None:
        chunks[:, 0] = bos_id
    assert len(model.calls) == 3
    for (ids, pos), chunk in zip(model.calls, chunks, strict=True):
        assert pos == 0 and np.array_equal(ids, chunk)
    logits = torch.from_numpy(np.stack([model.forward(c, 0) for c in chunks]))  # (3, n_ctx, n_vocab)
    targets = torch.from_numpy(tokens[:3 * n_ctx].reshape(3, n_ctx))  # scored targets are the text's tokens
    ref = _reference_nll(logits, targets)
    assert ref.size == 3 * (n_ctx - 1 - n_ctx // 2)
    np.testing.assert_allclose(result.nll, ref, rtol=1e-9, atol=1e-9)
    assert result.ppl == pytest.approx(math.exp(ref.mean()), rel=1e-12)
    # llama.cpp's error formula equals the standard error of the mean NLL (ddof=1), scaled by ppl
    assert result.stderr == pytest.approx(result.ppl * ref.std(ddof=1) / math.sqrt(ref.size), rel=1e-9)
    per_chunk = ref.reshape(3, -1)
    expected_running = [math.exp(per_chunk[:i].mean()) for i in (1, 2, 3)]
    assert [i for i, _ in seen] == [1, 2, 3]
    np.testing.assert_allclose([p for _, p in seen], expected_running, rtol=1e-12)
    assert result.running == [p for _, p in seen]

    assert perplexity(model, tokens, n_ctx, n_chunks=2).n_chunks == 2


def test_bad_arguments_raise_clear_errors(rng):
    model = _TableModel(20, 32, rng)
    tokens = rng.integers(0, 20, 40)
    with pytest.raises(LlambaError, match="needs at least 32"):
        perplexity(model, tokens[:30], 32)
    with pytest.raises(ContextOverflowError, match="n_ctx >= 64"):
        perplexity(model, np.tile(tokens, 4), 64)
    for bad in (2, 8.0):
        with pytest.raises(LlambaError, match="n_ctx must be an integer"):
            perplexity(model, tokens, bad)
    with pytest.raises(LlambaError, match="n_chunks must be a positive integer"):
        perplexity(model, tokens, 8, n_chunks=0)


# ---- KL divergence against the float reference (--kl-divergence) ------------------------------------------------

class _LastTableModel(_TableModel):
    """_TableModel returning only the last token's logits unless all_logits, as runtime.model.Model does."""

    def forward(self, tokens, pos, cache=None, all_logits=False):
        out = super().forward(tokens, pos)
        return out if all_logits else out[-1]


def _reference_kld(logits: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor) -> dict:
    """llama.cpp's token statistics written independently in torch: logits, ref (m, n_vocab), targets (m,)."""
    lq, lb = torch.log_softmax(logits.double(), -1), torch.log_softmax(ref.double(), -1)
    kld = torch.nn.functional.kl_div(lq, lb, log_target=True, reduction="none").sum(-1)  # KL(ref || measured)
    pick = targets[:, None]
    dp = lq.exp().gather(-1, pick)[:, 0] - lb.exp().gather(-1, pick)[:, 0]
    return dict(kld=kld.numpy(), nll=-lq.gather(-1, pick)[:, 0].numpy(), nll_base=-lb.gather(-1, pick)[:, 0].numpy(),
                dp=dp.numpy(), same=(lq.argmax(-1) == lb.argmax(-1)).numpy())


def test_kl_divergence_decodes_the_scored_half_and_matches_torch(rng):
    n_ctx, n_vocab = 16, 40
    model, ref = _LastTableModel(n_vocab, 32, rng), _LastTableModel(n_vocab, 32, rng)
    ref.table = model.table + rng.standard_normal(model.table.shape).astype(np.float32) * 0.5  # a near model
    tokens = rng.integers(0, n_vocab, 2 * n_ctx + 3)
    seen = []
    result = kl_divergence(model, ref, tokens, n_ctx, on_chunk=lambda i, r: seen.append((i, r.kld.size)))

    first = n_ctx // 2
    chunks = tokens[:2 * n_ctx].reshape(2, n_ctx)
    # decode: per chunk, the prompt batch chunk[:first + 1] from 0, then one token per call at its position
    expected_calls = []
    for c in chunks:
        expected_calls += [(c[:first + 1], 0)] + [(c[p:p + 1], p) for p in range(first + 1, n_ctx - 1)]
    assert len(model.calls) == len(expected_calls)
    for (ids, pos), (want, want_pos) in zip(model.calls, expected_calls, strict=True):
        assert pos == want_pos and np.array_equal(ids, want)
    assert [(ids.size, pos) for ids, pos in ref.calls] == [(n_ctx, 0), (n_ctx, 0)]  # reference: whole batches

    scored = slice(first, n_ctx - 1)
    got = torch.from_numpy(np.concatenate([model.table[c] + model.pos_bias[:n_ctx] for c in chunks]))
    want = torch.from_numpy(np.concatenate([ref.table[c] + ref.pos_bias[:n_ctx] for c in chunks]))
    keep = np.concatenate([np.arange(n_ctx)[scored] + i * n_ctx for i in range(2)])
    targets = torch.from_numpy(np.concatenate([c[first + 1:] for c in chunks]))
    oracle = _reference_kld(got[keep], want[keep], targets)
    np.testing.assert_allclose(result.kld, oracle["kld"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.nll, oracle["nll"], rtol=1e-9)
    np.testing.assert_allclose(result.nll_base, oracle["nll_base"], rtol=1e-9)
    np.testing.assert_allclose(result.p - result.p_base, oracle["dp"], atol=1e-12)
    assert np.array_equal(result.same_top, oracle["same"]) and 0 < result.same_top.mean() < 1
    assert result.ppl == pytest.approx(math.exp(oracle["nll"].mean()), rel=1e-12)
    assert seen == [(1, n_ctx - 1 - first), (2, 2 * (n_ctx - 1 - first))]

    model.calls.clear()
    batch = kl_divergence(model, ref, tokens, n_ctx, mode="batch")
    assert [(ids.size, pos) for ids, pos in model.calls] == [(n_ctx, 0), (n_ctx, 0)]
    np.testing.assert_allclose(batch.kld, result.kld, rtol=1e-6)  # a table model has no kernel paths


def test_kl_divergence_bad_arguments(rng, tmp_path, capsys):
    model, ref = _LastTableModel(20, 32, rng), _LastTableModel(20, 32, rng)
    tokens = rng.integers(0, 20, 40)
    with pytest.raises(LlambaError, match="unknown KL divergence mode 'greedy'"):
        kl_divergence(model, ref, tokens, 16, mode="greedy")
    with pytest.raises(LlambaError, match="measured model has 20 tokens and the reference 21"):
        kl_divergence(model, _LastTableModel(21, 32, rng), tokens, 16)
    with pytest.raises(ContextOverflowError, match="n_ctx >= 64"):
        kl_divergence(model, ref, np.tile(tokens, 4), 64)
    with pytest.raises(LlambaError, match="needs at least 32"):
        kl_divergence(model, ref, tokens[:30], 32)
    with pytest.raises(LlambaError, match="unknown kernel path 'fast'"):
        with kernel_path("fast"):
            pass
    tool = _tool()
    assert tool.main(["-f", str(TEXT_PATH), "--kernels", "int"]) == 1
    assert "apply to --kl-divergence only" in capsys.readouterr().err
    for bad in (["--kl-mode", "greedy"], ["--kernels", "fast"]):
        with pytest.raises(SystemExit) as e:
            tool.main(["-f", str(TEXT_PATH), "--kl-divergence", *bad])
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


KL_CTX = 40  # 21 tokens of prompt batch (sgemm), then 18 decoded one at a time (the integer matvec kernels)


def _stat(out: str, label: str) -> float:
    return float(re.search(re.escape(label) + r"\s*:\s*(-?[\d.]+)", out).group(1))


def test_tool_kl_divergence_of_int_decode_against_float_reference(model_path, capsys):
    """SmolLM2's integer decode path against its float path, checked against torch over logits computed here:
    the float model's chunk as one batch, the integer model's prompt batch then one token per call."""
    path = model_path("smollm2-135m-instruct")
    rc = _tool().main(["-m", str(path), "-f", str(TEXT_PATH), "-c", str(KL_CTX), "--chunks", "1",
                       "--kl-divergence", "--kernels", "int"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "int kernels (prompt batch of 21 tokens, then 18 tokens decoded one at a time) against the float " \
           "reference" in out

    with GGUFFile(path) as g:
        tokenizer = Tokenizer.from_gguf(g.metadata)
    ids = np.array(tokenizer.encode(TEXT_PATH.read_text(encoding="utf-8"), special=False)[:KL_CTX])
    with kernel_path("float"):
        ref = load_model(path, n_ctx=KL_CTX)
        ref = ref.forward(ids, 0, ref.new_cache(), all_logits=True)  # (KL_CTX, n_vocab)
    with kernel_path("int"):
        model = load_model(path, n_ctx=KL_CTX)
    assert {layer.w.wq.path for layer in model.layers} == {"int"}
    first = KL_CTX // 2
    kv = model.new_cache()
    got = [model.forward(ids[:first + 1], 0, kv)]
    got += [model.forward(ids[p:p + 1], p, kv) for p in range(first + 1, KL_CTX - 1)]
    oracle = _reference_kld(torch.from_numpy(np.stack(got)), torch.from_numpy(ref[first:KL_CTX - 1]),
                            torch.from_numpy(ids[first + 1:]))
    kld, dp = oracle["kld"], oracle["dp"]
    assert 1e-5 < kld.mean() < 0.05  # the 8-bit activations move the distribution, a little
    assert _stat(out, "Mean    KLD") == pytest.approx(kld.mean(), rel=1e-3, abs=2e-6)
    assert _stat(out, "Maximum KLD") == pytest.approx(kld.max(), rel=1e-3, abs=2e-6)
    assert _stat(out, "Median  KLD") == pytest.approx(np.median(kld), rel=1e-3, abs=2e-6)
    assert _stat(out, "Same top p") == pytest.approx(100 * oracle["same"].mean(), abs=1e-3)
    assert _stat(out, "RMS Δp    ") == pytest.approx(100 * math.sqrt((dp * dp).mean()), abs=1e-3)
    assert _stat(out, "Mean PPL(Q)                   ") == pytest.approx(math.exp(oracle["nll"].mean()), rel=1e-5)
    assert _stat(out, "Mean PPL(base)                ") == pytest.approx(math.exp(oracle["nll_base"].mean()),
                                                                          rel=1e-5)
    chunk_row = re.search(r"^\s+1\s+([\d.]+) ±", out, re.M)
    assert float(chunk_row.group(1)) == pytest.approx(math.exp(oracle["nll"].mean()), rel=1e-4)


# ---- the real SmolLM2 against transformers, through the command-line tool ----------------------------------------

SMOL_CTX, SMOL_CHUNKS = 256, 2


def test_tool_matches_transformers_perplexity(model_path, capsys):
    """Measured: ours [1]29.6909,[2]28.2766 +/- 4.89192; transformers 29.6908, 28.2766 +/- 4.89192."""
    path = model_path("smollm2-135m-instruct")
    with GGUFFile(path) as g:
        tokenizer = Tokenizer.from_gguf(g.metadata)
    assert not tokenizer.add_bos  # SmolLM2's GGUF does not add BOS: chunks are plain text tokens
    ids = tokenizer.encode(TEXT_PATH.read_text(encoding="utf-8"), special=False)
    chunks = torch.tensor(ids[:SMOL_CTX * SMOL_CHUNKS]).reshape(SMOL_CHUNKS, SMOL_CTX)
    hf = reference_model(path)
    with torch.no_grad():
        ref = _reference_nll(hf(chunks).logits, chunks)  # (n_scored,)
    del hf

    rc = _tool().main(["-m", str(path), "-f", str(TEXT_PATH), "-c", str(SMOL_CTX), "--chunks", str(SMOL_CHUNKS)])
    out = capsys.readouterr().out
    assert rc == 0, out
    running = [float(x) for x in re.findall(r"\[\d\]([\d.]+),", out)]
    final, err = map(float, re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out).groups())
    per_chunk = ref.reshape(SMOL_CHUNKS, -1)
    ref_running = [math.exp(per_chunk[:i + 1].mean()) for i in range(SMOL_CHUNKS)]
    np.testing.assert_allclose(running, ref_running, rtol=0.01)
    assert final == pytest.approx(ref_running[-1], rel=0.01)
    assert err == pytest.approx(final * ref.std(ddof=1) / math.sqrt(ref.size), rel=0.05)


def test_tool_reports_bad_input(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["-m", str(tmp_path / "none.gguf"), "-f", str(TEXT_PATH)]) == 1
    assert tool.main(["-f", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read" in capsys.readouterr().err


# ---- real weights: dequantize a shipped Q4_K_M, re-quantize with our quantizers, compare perplexity --------------

ROUND_TRIP_MODEL = "qwen2.5-coder-0.5b-instruct"
RT_CTX, RT_CHUNKS = 128, 2


def test_requantized_real_model_keeps_perplexity(model_path, tmp_path):
    """Qwen2.5-Coder-0.5B Q4_K_M (the 1.5B takes too long on 2 cores with the current kernels and quantizers).

    The shipped file (made by llama.cpp) is dequantized to an F16 GGUF, which llamba re-quantizes to q8_0 and
    q4_k_m, tensor by tensor (quantize_gguf streams; nothing holds the whole model). Our q4_k_m mix must pick
    the same type for every tensor as llama.cpp did, and the perplexities must stay within 1% (q8_0) and 5%
    (q4_k_m) of the original's. Measured (2 chunks of 128 tokens): original 60.048, q8_0 60.249 (+0.33%),
    q4_k_m 60.047 (-0.001%: re-quantizing dequantized Q4_K/Q6_K blocks finds nearly the same blocks again)."""
    src = model_path(ROUND_TRIP_MODEL)
    quiet = dict(progress=False, log=lambda s: None)
    f16 = quantize_gguf(src, tmp_path / "f16.gguf", "f16", allow_requantize=True, **quiet).path
    q8 = quantize_gguf(f16, tmp_path / "q8_0.gguf", "q8_0", **quiet).path
    q4 = quantize_gguf(f16, tmp_path / "q4_k_m.gguf", "q4_k_m", **quiet).path
    f16.unlink()

    with GGUFFile(src) as orig, GGUFFile(q4) as ours:
        assert {n: t.qtype for n, t in ours.tensors.items()} == {n: t.qtype for n, t in orig.tensors.items()}
        tokenizer = Tokenizer.from_gguf(orig.metadata)

    text = TEXT_PATH.read_text(encoding="utf-8")
    ppl = {name: text_perplexity(load_model(p, n_ctx=RT_CTX), tokenizer, text, RT_CTX, RT_CHUNKS).ppl
           for name, p in [("orig", src), ("q8_0", q8), ("q4_k_m", q4)]}
    assert abs(ppl["q8_0"] / ppl["orig"] - 1) < 0.01, ppl
    assert abs(ppl["q4_k_m"] / ppl["orig"] - 1) < 0.05, ppl


# ---- the output head's kernel path (issue 10: the logits generation samples from) ---------------------------------

class _Spy:
    """Records which head a forward multiplies with, and how."""

    def __init__(self, m, name: str, log: list):
        self.m, self.name, self.log = m, name, log

    def matvec(self, x, out=None):
        self.log.append(f"{self.name}.matvec")
        return self.m.matvec(x, out=out)

    def matmul(self, X, out=None):
        self.log.append(f"{self.name}.matmul")
        return self.m.matmul(X, out=out)


def test_prompt_head_follows_the_batch_path_and_decode_stays_int(model_path):
    """On the int path, decode steps take the int head; the last position of a prompt batch of >= sgemm_tokens
    tokens (whose layers ran sgemm) takes the float head, so generation's first token sees what LLM.logits() gives.
    (Without repacking: interleaved matrices never switch to sgemm.)"""
    path = model_path("smollm2-135m-instruct")
    with kernel_path("int"):
        assert load_model(path, n_ctx=320).sgemm_tokens > 320
        model = load_model(path, n_ctx=320, repack=False)
    assert model.output.path == "int" and model.batch_output.path == "float"
    assert model.output.raw is model.batch_output.raw or np.shares_memory(model.output.raw, model.batch_output.raw)
    n = model.sgemm_tokens + 4
    ids = np.arange(1000, 1000 + n + 1)
    kv = model.new_cache()
    full = model.forward(ids[:n], 0, kv, all_logits=True)  # (n, n_vocab): sgemm throughout, head included
    last = model.forward(ids[:n], 0, kv)  # what generation samples its first token from
    np.testing.assert_allclose(last, full[-1], atol=2e-3)  # float32 rounding only (measured 3e-5 on a chat prompt)

    log = []
    model.output, model.batch_output = _Spy(model.output, "int", log), _Spy(model.batch_output, "float", log)
    model.forward(ids[:n], 0, kv)
    model.forward(ids[n:n + 1], n, kv)  # a decode step
    model.forward(ids[:5], 0, kv)  # a short prompt: its layers ran the int kernels, so does its head
    model.forward(ids[:n], 0, kv, all_logits=True)
    assert log == ["float.matvec", "int.matvec", "int.matvec", "int.matmul"]
