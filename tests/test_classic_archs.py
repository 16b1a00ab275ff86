"""GPT-NeoX, GPT-2, Falcon (7B multi-query and 40B grouped-query layouts), Phi-2, OPT, MPT and BLOOM end to end
against transformers and llama.cpp (which has no OPT: its llama.cpp check is left out).

Tiny random transformers models (hidden 256, 4 heads, 2 layers; GPT-NeoX with rotary_pct 0.25 and parallel
residual, Phi-2 with partial_rotary_factor 0.375, MPT and BLOOM with ALiBi; weights drawn with std 0.06 so their
logits are decisive, norms and biases randomized) are saved with
save_pretrained, converted by runtime.convert and run by llamba over 40 teacher-forced tokens; transformers' own
forward pass on the original weights is the oracle. Checked: logits at f32 / q8_0 / q4_k_m, KV-cache decoding
(prompt, then one token at a time) against the full pass, 16 greedy tokens against transformers' greedy, and the
converted f32 file in llama.cpp (llama-cpp-python) giving llamba's top-1.
Measured (40 tokens): f32 max relative error 3-4e-7; correlation with transformers q8_0 0.99998 (both),
q4_k_m gpt2 0.9994, gptneox 0.9989; llama.cpp on the f32 files: correlation 0.99999999, same top-1 everywhere.
Falcon 7B / 40B, Phi-2, OPT, MPT, BLOOM: f32 2.8-7.2e-7; q8_0 correlation >= 0.9999; q4_k_m 0.9974 / 0.9985,
0.9992, 0.9984, 0.9925 (MPT: no biases or norm biases to absorb the 4-bit error), 0.9988.
Dropping the converter's per-head QKV reorder (gptneox) gives relative error 0.66, a sequential residual 0.23;
MPT without its clip_qkv clamp (mptclip, clip 0.5) 0.16.
"""

import numpy as np
import pytest
from hf_models import (
    N_TOKENS,
    assert_greedy_matches,
    assert_logits_match,
    assert_same_top1,
    checkpoint_fixture,
    llama_cpp_logits,
    llamba_logits,
    tokens_for,
    transformers_logits,
)

from runtime.archs import bloom, falcon, mpt, opt
from runtime.convert import convert
from runtime.convert.requantize import quantize_gguf
from runtime.errors import UnsupportedError
from runtime.gguf import GGUFFile
from runtime.model import load_model

KINDS = ("gptneox", "gpt2", "falcon", "falcon40b", "phi2", "opt", "mpt", "mptclip", "bloom")
LLAMA_CPP_KINDS = tuple(k for k in KINDS if k != "opt")  # llama.cpp has no OPT architecture
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("outtype,min_corr", [("f32", None), ("q8_0", 0.999), ("q4_k_m", 0.98)])
def test_logits_match_transformers(converted, kind, outtype, min_corr):
    path, model = converted(kind, outtype)
    tokens = tokens_for(model)
    assert_logits_match(llamba_logits(path, tokens), transformers_logits(model, tokens), min_corr, f"{kind} {outtype}")


@pytest.mark.parametrize("kind", KINDS)
def test_q4_k_m_plan_counts_the_layers(converted, kind):
    """The converter's Q4_K_M mix gives attn_v / ffn_down more bits in the layers llama.cpp does, whatever
    config.json calls its layer count (n_layer, n_layers, num_hidden_layers): the same plan as requantizing the
    f32 file, whose plan is checked against llama.cpp's own Q4_K_M files (test_quantize_file.py)."""
    path, _ = converted(kind, "f32")
    with GGUFFile(converted(kind, "q4_k_m")[0]) as g:
        written = {n: t.qtype.name for n, t in g.tensors.items()}
    plan = quantize_gguf(path, path, "q4_k_m", dry_run=True, log=lambda s: None)
    assert written == {t.name: t.qtype.name for t in plan.tensors}


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
    with GGUFFile(converted("falcon40b", "f32")[0]) as g:  # 4 query + 2 * 2 kv heads of 64; two norms
        assert g.metadata["falcon.attention.head_count_kv"] == 2 and "blk.1.attn_norm_2.bias" in g.tensors
        assert g.tensors["blk.0.attn_qkv.weight"].shape == (512, 256)
    with GGUFFile(converted("phi2", "f32")[0]) as g:
        assert g.metadata["phi2.rope.dimension_count"] == 24 and "output.bias" in g.tensors
    with GGUFFile(converted("opt", "f32")[0]) as g:  # OPT's 2 offset rows dropped
        assert g.tensors["position_embd.weight"].shape == (256, 256) and "output.weight" not in g.tensors
    for kind in ("mpt", "bloom"):
        with GGUFFile(converted(kind, "f32")[0]) as g:
            assert g.metadata[f"{kind}.attention.max_alibi_bias"] == 8.0 and "position_embd.weight" not in g.tensors
    with GGUFFile(converted("bloom", "f32")[0]) as g:
        assert {"token_embd_norm.weight", "token_embd_norm.bias", "blk.0.attn_qkv.bias"} <= set(g.tensors)


@pytest.mark.parametrize("module,cfg,message", [
    (opt, {"hidden_size": 1024, "do_layer_norm_before": False}, "post-LayerNorm"),
    (opt, {"hidden_size": 1024, "word_embed_proj_dim": 512}, "word_embed_proj_dim 512"),
    (mpt, {"d_model": 256, "attn_config": {"qk_ln": True}}, "qk_ln"),
    (falcon, {"hidden_size": 256, "alibi": True}, "alibi"),
    (bloom, {"hidden_size": 256, "apply_residual_connection_post_layernorm": True}, "post_layernorm"),
])
def test_unsupported_variants_are_refused(module, cfg, message):
    with pytest.raises(UnsupportedError, match=message):
        module.hf_metadata(cfg)


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_decoding_equals_full_pass(converted, kind):
    path, model = converted(kind, "f32")
    tokens = tokens_for(model)
    full = llamba_logits(path, tokens)  # (n, n_vocab)
    m = load_model(path, type_k="f32", type_v="f32")  # as llamba_logits
    kv = m.new_cache()
    steps = [m.forward(tokens[:24], 0, kv, all_logits=True)]
    steps += [m.forward(tokens[i:i + 1], i, kv, all_logits=True) for i in range(24, N_TOKENS)]
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=0, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_transformers(converted, kind):
    path, model = converted(kind, "f32")
    assert_greedy_matches(path, model, tokens_for(model)[:8])


@pytest.mark.parametrize("kind", LLAMA_CPP_KINDS)
def test_llama_cpp_gives_the_same_top1(converted, kind):
    path, model = converted(kind, "f32")
    tokens = tokens_for(model)
    got = llamba_logits(path, tokens)
    assert_same_top1(got, llama_cpp_logits(path, tokens), decisive=got)
