"""Mixtral (mixture of experts): the routed feed-forward block against numpy, and converted tiny Mixtral
checkpoints against transformers' MixtralForCausalLM.

A tiny random Mixtral (tests/hf_models.py: hidden 256, 2 layers, 4 experts, top-2) is converted to GGUF (stacked
`ffn_*_exps` experts) and llamba's logits over 40 teacher-forced tokens are compared with transformers'; its
routers pick 6 different expert pairs per layer over those tokens. Measured: f32 max relative error 4e-7 (leaving
out the top-k renormalization: 4e-2); logit correlation q8_0 0.99996, q4_k_m 0.995.
"""

import json

import numpy as np
import pytest
import torch
from hf_models import assert_logits_match, checkpoint_fixture, llamba_logits, transformers_logits
from safetensors.numpy import load_file

from quant import GGMLType, QMatrix, quantize
from runtime.archs import llama
from runtime.convert import ConvertError, convert
from runtime.convert.writer import PlannedTensor, typed, write_gguf
from runtime.errors import GGUFError
from runtime.gguf import GGUFFile
from runtime.layers import MoE, silu
from runtime.model import load_model

N_TOKENS = 40
checkpoints = checkpoint_fixture()


# ---- the block -----------------------------------------------------------------------------------

def _experts(w: np.ndarray, qtype: GGMLType) -> list:
    """(n_expert, n_rows, n_cols) float32 -> per-expert QMatrix views of one stacked raw array, as the loader
    slices a stacked GGUF tensor."""
    raw = quantize(w, qtype)  # (n_expert, n_rows, row_bytes)
    return [QMatrix(raw[e], qtype, w.shape[2]) for e in range(w.shape[0])]


def _numpy_moe(h, router, gate, up, down, k) -> np.ndarray:
    """Direct computation: softmax(router h), top-k, renormalized weights, sum of SwiGLU experts."""
    logits = h.astype(np.float64) @ router.T  # (n, n_expert)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = np.zeros(h.shape)
    for t in range(h.shape[0]):
        top = np.argsort(-probs[t])[:k]
        for e in top:
            g, u = gate[e] @ h[t], up[e] @ h[t]
            out[t] += probs[t, e] / probs[t, top].sum() * (down[e] @ (g / (1 + np.exp(-g)) * u))
    return out


def _block(rng, n_expert=4, n_embd=64, n_ff=96, qtype=GGMLType.F32):
    router = rng.standard_normal((n_expert, n_embd)).astype(np.float32)
    gate, up = (rng.standard_normal((n_expert, n_ff, n_embd)).astype(np.float32) * 0.1 for _ in range(2))
    down = rng.standard_normal((n_expert, n_embd, n_ff)).astype(np.float32) * 0.1
    return (router, gate, up, down), (QMatrix(router.view(np.uint8), GGMLType.F32, n_embd),
                                      _experts(gate, qtype), _experts(up, qtype), _experts(down, qtype))


def _run(moe: MoE, h: np.ndarray, n_ff: int) -> np.ndarray:
    n = h.shape[0]
    return moe(h, silu, np.empty((n, n_ff), np.float32), np.empty((n, n_ff), np.float32), np.empty_like(h))


@pytest.mark.parametrize("n_tokens", [1, 9])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_moe_block_matches_numpy(rng, n_tokens, k):
    (router, gate, up, down), (qr, qg, qu, qd) = _block(rng)
    h = rng.standard_normal((n_tokens, 64)).astype(np.float32)
    got = _run(MoE(qr, qg, qu, qd, k), h, 96)
    ref = _numpy_moe(h, router, gate, up, down, k)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    if n_tokens > 1 and k < 4:  # the batch really was split among experts
        assert len(np.unique(MoE(qr, qg, qu, qd, k).route(h)[0])) > k


def test_moe_block_quantized_experts(rng):
    """Q8_0 experts sliced from a stacked raw array: the block equals numpy on the dequantized weights."""
    (router, *_), (qr, qg, qu, qd) = _block(rng, qtype=GGMLType.Q8_0)
    h = rng.standard_normal((5, 64)).astype(np.float32)
    deq = [np.stack([m.dequantize() for m in ms]) for ms in (qg, qu, qd)]
    ref = _numpy_moe(h, router, *deq, 2)
    np.testing.assert_allclose(_run(MoE(qr, qg, qu, qd, 2), h, 96), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_unrouted_expert_is_never_read(rng):
    """Expert 3's bytes are all 0xFF (NaN as float32) and the router never picks it (its logit is the only
    negative one): the output stays finite and equal to the block without that expert's contribution, so
    no kernel touched its weights (a NaN times a zero weight would still be NaN)."""
    (router, gate, up, down), (qr, qg, qu, qd) = _block(rng)
    router = np.abs(router)
    router[3] = -router[3]
    h = np.abs(rng.standard_normal((6, 64))).astype(np.float32) + 0.1  # positive: expert 3's logit < 0 < others
    qr = QMatrix(router.view(np.uint8), GGMLType.F32, 64)
    nan_experts = [qs[:3] + [QMatrix(np.full_like(qs[3].raw, 0xFF), GGMLType.F32, qs[3].n_cols)]
                   for qs in (qg, qu, qd)]
    assert np.isnan(nan_experts[0][3].dequantize()).all()
    moe = MoE(qr, *nan_experts, 2)
    assert 3 not in moe.route(h)[0]
    got = _run(moe, h, 96)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _numpy_moe(h, router, gate, up, down, 2), rtol=1e-4, atol=1e-6)


# ---- converted checkpoints against transformers ------------------------------------------------------

@pytest.fixture(scope="module")
def mixtral(checkpoints, tmp_path_factory):
    """(checkpoint dir, transformers model, f32 GGUF path)."""
    d, model = checkpoints("mixtral", "safetensors")
    out = tmp_path_factory.mktemp("mixtral-gguf") / "f32.gguf"
    convert(d, out, "f32", progress=False, log=lambda s: None)
    return d, model, out


def _tokens(model) -> np.ndarray:
    return np.random.default_rng(7).integers(0, model.config.vocab_size, N_TOKENS)


def test_converted_layout(mixtral):
    d, _, path = mixtral
    w2 = load_file(d / "model.safetensors")["model.layers.1.block_sparse_moe.experts.2.w2.weight"]  # (n_embd, n_ff)
    with GGUFFile(path) as g:
        md, t = g.metadata, g.tensors
        assert (md["llama.expert_count"], md["llama.expert_used_count"]) == (4, 2)
        assert t["blk.1.ffn_gate_inp.weight"].shape == (4, 256)
        assert t["blk.1.ffn_gate_exps.weight"].shape == t["blk.1.ffn_up_exps.weight"].shape == (4, 512, 256)
        assert t["blk.1.ffn_down_exps.weight"].shape == (4, 256, 512)
        assert not any(n.startswith("blk.0.ffn_up.") for n in t)
        np.testing.assert_array_equal(t["blk.1.ffn_down_exps.weight"].array()[2], w2)


@pytest.mark.parametrize("outtype,min_corr", [("f32", None), ("q8_0", 0.999), ("q4_k_m", 0.98)])
def test_logits_match_transformers(mixtral, tmp_path, outtype, min_corr):
    d, model, path = mixtral
    if outtype != "f32":
        path = tmp_path / f"{outtype}.gguf"
        convert(d, path, outtype, progress=False, log=lambda s: None)
    tokens = _tokens(model)
    assert_logits_match(llamba_logits(path, tokens), transformers_logits(model, tokens), min_corr, f"mixtral {outtype}")


def test_kv_cache_decoding_equals_full_pass(mixtral):
    _, model, path = mixtral
    tokens = _tokens(model)
    full = llamba_logits(path, tokens)  # (n_tokens, n_vocab), one batch
    m = load_model(path, type_k="f32", type_v="f32")  # as llamba_logits
    kv = m.new_cache()
    steps = [m.forward(tokens[:24], 0, kv, all_logits=True)] + [m.forward(tokens[i:i + 1], i, kv, all_logits=True)
                                                                for i in range(24, N_TOKENS)]
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=0, atol=1e-4 * np.abs(full).max())


def test_greedy_matches_transformers(mixtral):
    _, model, path = mixtral
    prompt = _tokens(model)[:8]
    with torch.no_grad():
        ref = model.generate(torch.tensor(prompt)[None], max_new_tokens=16, do_sample=False, min_new_tokens=16,
                             attention_mask=torch.ones(1, prompt.size, dtype=torch.long))[0, prompt.size:].tolist()
    m = load_model(path)
    kv = m.new_cache()
    got, logits, pos = [], m.forward(prompt, 0, kv), prompt.size
    for _ in range(16):
        got.append(int(logits.argmax()))
        logits, pos = m.forward([got[-1]], pos, kv), pos + 1
    assert got == ref


def _rewrite(src, dst, split: bool = False, **metadata):
    """Copy of the GGUF src (llama.* metadata only, `metadata` overriding keys without the prefix) with stacked
    expert tensors split into older files' per-expert `blk.N.ffn_gate.E.weight` if split."""
    with GGUFFile(src) as g:
        md = {k: v for k, v in g.metadata.items() if k.startswith("llama.")} | {f"llama.{k}": v
                                                                               for k, v in metadata.items()}
        planned = []
        for name, t in g.tensors.items():
            parts = ([(name.replace("_exps.weight", f".{e}.weight"), t.raw[e]) for e in range(t.shape[0])]
                     if split and name.endswith("_exps.weight") else [(name, t.raw)])
            planned += [PlannedTensor(n, t.shape[-raw.ndim:], t.qtype, lambda raw=raw: raw) for n, raw in parts]
        write_gguf(dst, "llama", [typed(k, v) for k, v in md.items()], planned, progress=False)


def test_per_expert_tensors_load(mixtral, tmp_path):
    """Older files store one tensor per expert: same logits as the stacked file."""
    _, model, path = mixtral
    _rewrite(path, tmp_path / "split.gguf", split=True)
    with GGUFFile(tmp_path / "split.gguf") as g:
        assert "blk.0.ffn_up.3.weight" in g.tensors and "blk.0.ffn_up_exps.weight" not in g.tensors
    tokens = _tokens(model)
    np.testing.assert_array_equal(llamba_logits(tmp_path / "split.gguf", tokens), llamba_logits(path, tokens))


@pytest.mark.parametrize("used", [0, 5])
def test_bad_expert_used_count(mixtral, tmp_path, used):
    _rewrite(mixtral[2], tmp_path / "bad.gguf", expert_used_count=used)
    with pytest.raises(GGUFError, match="expert_used_count"):
        load_model(tmp_path / "bad.gguf")


@pytest.mark.parametrize("experts", [{"num_local_experts": 4, "num_experts_per_tok": 5},
                                     {"num_local_experts": 4, "num_experts_per_tok": None}])
def test_converter_rejects_bad_expert_config(mixtral, experts):
    cfg = json.loads((mixtral[0] / "config.json").read_text()) | experts
    with pytest.raises(ConvertError, match="num_experts_per_tok"):
        llama.hf_metadata(cfg)
