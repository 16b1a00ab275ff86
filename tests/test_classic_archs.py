"""GPT-NeoX (Pythia, Dolly v2) and GPT-2 (Cerebras-GPT), end to end against transformers and llama.cpp.

Tiny random transformers models (hidden 256, 4 heads, 2 layers; GPT-NeoX with rotary_pct 0.25 and parallel
residual; weights drawn with std 0.06 so their logits are decisive, norms and biases randomized) are saved with
save_pretrained, converted by runtime.convert and run by llamba over 40 teacher-forced tokens; transformers' own
forward pass on the original weights is the oracle. Checked: logits at f32 / q8_0 / q4_k_m, KV-cache decoding
(prompt, then one token at a time) against the full pass, 16 greedy tokens against transformers' greedy, and the
converted f32 file in llama.cpp (llama-cpp-python) giving llamba's top-1.
Measured (40 tokens): f32 max relative error 3-4e-7; correlation with transformers q8_0 0.99998 (both),
q4_k_m gpt2 0.9994, gptneox 0.9989; llama.cpp on the f32 files: correlation 0.99999999, same top-1 everywhere.
Dropping the converter's per-head QKV reorder (gptneox) gives relative error 0.66, a sequential residual 0.23.
"""

import numpy as np
import pytest
import torch
from hf_models import assert_logits_match, checkpoint_fixture, llamba_logits, transformers_logits

from runtime.bench_llama_cpp import open_llama
from runtime.convert import convert
from runtime.gguf import GGUFFile
from runtime.model import load_model

KINDS = ("gptneox", "gpt2")
N_TOKENS = 40
MARGIN = 1e-3  # a top-2 gap that f32 rounding differences between engines (measured <= 2e-4) cannot close
checkpoints = checkpoint_fixture(initializer_range=0.06)


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    """converted(kind, outtype) -> (GGUF path, transformers model), each converted once."""
    made = {}

    def get(kind: str, outtype: str):
        if (kind, outtype) not in made:
            d, model = checkpoints(kind, "safetensors")
            out = tmp_path_factory.mktemp(f"{kind}-gguf") / f"{outtype}.gguf"
            convert(d, out, outtype, progress=False, log=lambda s: None)
            made[kind, outtype] = out, model
        return made[kind, outtype]
    return get


def tokens_for(model) -> np.ndarray:
    return np.random.default_rng(7).integers(0, model.config.vocab_size, N_TOKENS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("outtype,min_corr", [("f32", None), ("q8_0", 0.999), ("q4_k_m", 0.98)])
def test_logits_match_transformers(converted, kind, outtype, min_corr):
    path, model = converted(kind, outtype)
    tokens = tokens_for(model)
    assert_logits_match(llamba_logits(path, tokens), transformers_logits(model, tokens), min_corr, f"{kind} {outtype}")


def test_file_layout(converted):
    """The tensors and metadata llama.cpp's loaders look for (fused attn_qkv, biases, LayerNorm epsilon)."""
    with GGUFFile(converted("gptneox", "f32")[0]) as g:
        md, names = g.metadata, set(g.tensors)
        assert md["general.architecture"] == "gptneox" and md["gptneox.rope.dimension_count"] == 16
        assert md["gptneox.use_parallel_residual"] is True
        assert md["gptneox.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
        assert {"output.weight", "output_norm.bias", "blk.1.attn_qkv.bias", "blk.1.ffn_down.bias"} <= names
        assert g.tensors["blk.0.attn_qkv.weight"].shape == (768, 256)
    with GGUFFile(converted("gpt2", "f32")[0]) as g:
        names = set(g.tensors)
        assert g.metadata["gpt2.context_length"] == 256 and "output.weight" not in names
        assert g.tensors["position_embd.weight"].shape == (256, 256)
        assert g.tensors["blk.0.ffn_up.weight"].shape == (512, 256)  # Conv1D (256, 512) transposed


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_decoding_equals_full_pass(converted, kind):
    path, model = converted(kind, "f32")
    tokens = tokens_for(model)
    full = load_model(path).forward(tokens, 0, all_logits=True)  # (n, n_vocab)
    m = load_model(path)
    steps = [m.forward(tokens[:24], 0, all_logits=True)]
    steps += [m.forward(tokens[i:i + 1], i, all_logits=True) for i in range(24, N_TOKENS)]
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_transformers(converted, kind):
    path, model = converted(kind, "f32")
    prompt = tokens_for(model)[:8]
    with torch.no_grad():
        ref = model.generate(torch.tensor(prompt)[None], max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    m = load_model(path)
    logits, got = m.forward(prompt, 0), []
    for i in range(16):
        got.append(int(np.argmax(logits)))
        logits = m.forward(np.array(got[-1:]), len(prompt) + i)
    assert got == ref


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_gives_the_same_top1(converted, kind):
    pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')
    path, model = converted(kind, "f32")
    tokens = tokens_for(model)
    llm = open_llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True, verbose=False, n_threads=2)
    llm.eval(list(map(int, tokens)))
    ref = np.array(llm.scores[:N_TOKENS], np.float64)  # (n_tokens, n_vocab)
    llm.close()
    got = llamba_logits(path, tokens)
    top2 = np.sort(got, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > MARGIN
    assert clear.sum() >= N_TOKENS // 2
    assert (ref.argmax(1) == got.argmax(1))[clear].all()
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] >= 0.99999
