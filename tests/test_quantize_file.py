"""GGUF -> GGUF re-quantization: per-tensor type plan against llama.cpp's own Q4_K_M files, logits against
transformers, and the safety rules (no re-quantizing without the flag, no overwrite, nothing left on failure)."""

import numpy as np
import pytest
from hf_models import bpe_tokenizer, llamba_logits, load_tool, save_model, transformers_logits

from runtime.convert import ConvertError, convert
from runtime.convert.requantize import quantize_gguf
from runtime.gguf import GGUFFile

quantize_main = load_tool("quantize").main
QUIET = {"progress": False, "log": lambda s: None}


@pytest.mark.parametrize("name", ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"])
def test_q4_k_m_plan_matches_llama_cpp(model_path, name):
    """These files were made by llama.cpp's quantize with Q4_K_M: our plan must pick the same type per tensor
    (mix rules, file-order layer counting, Q5_0 / Q8_0 fallbacks for rows not a multiple of 256)."""
    path = model_path(name)
    plan = quantize_gguf(path, path, "q4_k_m", allow_requantize=True, dry_run=True, log=lambda s: None)
    with GGUFFile(path) as g:
        expected = {n: t.qtype.name for n, t in g.tensors.items()}
    assert {t.name: t.qtype.name for t in plan.tensors} == expected


def test_iq4_nl_plan_reads_the_gqa_ratio(model_path):
    """Qwen2.5-0.5B has 7 query heads per K/V head: llama.cpp's IQ4_NL mix gives its attn_v Q5_K (here Q5_1, the
    fallback for 896-element rows), the other matrices IQ4_NL (the rule itself: test_convert.test_iq4_nl_mix_rules)."""
    path = model_path("qwen2.5-coder-0.5b-instruct")
    plan = quantize_gguf(path, path, "iq4_nl", allow_requantize=True, dry_run=True, log=lambda s: None)
    types = {t.name: t.qtype.name for t in plan.tensors}
    assert types["blk.0.attn_v.weight"] == "Q5_1" and types["blk.0.attn_q.weight"] == "IQ4_NL"


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    """(f32 GGUF path, transformers model) of a tiny random llama."""
    d = tmp_path_factory.mktemp("llama")
    model = save_model(d, "llama", "safetensors", bpe_tokenizer(d, "llama-bpe"))
    convert(d, d / "f32.gguf", "f32", **QUIET)
    return d / "f32.gguf", model


def test_requantized_logits_match_transformers(f32_model, tmp_path):
    src, model = f32_model
    out = tmp_path / "q8.gguf"
    quantize_gguf(src, out, "q8_0", **QUIET)
    with GGUFFile(src) as a, GGUFFile(out) as b:
        assert b.metadata["general.file_type"] == 7
        assert b.metadata["tokenizer.ggml.tokens"] == a.metadata["tokenizer.ggml.tokens"]
        assert np.array_equal(b.metadata["tokenizer.ggml.token_type"], a.metadata["tokenizer.ggml.token_type"])
        assert b.tensors["blk.0.attn_q.weight"].qtype.name == "Q8_0"
        assert np.array_equal(b.tensors["blk.0.attn_norm.weight"].raw, a.tensors["blk.0.attn_norm.weight"].raw)
    tokens = np.random.default_rng(3).integers(0, model.config.vocab_size, 40)
    corr = np.corrcoef(llamba_logits(out, tokens).ravel(), transformers_logits(model, tokens).ravel())[0, 1]
    assert corr >= 0.999, corr


def test_requantize_needs_flag(f32_model, tmp_path, capsys):
    src, _ = f32_model
    q8 = tmp_path / "q8.gguf"
    assert quantize_main([str(src), str(q8), "q8_0"]) == 0
    capsys.readouterr()
    out = tmp_path / "q4.gguf"
    assert quantize_main([str(q8), str(out), "q4_k_m"]) == 1
    err = capsys.readouterr().err
    assert "already quantized (Q8_0)" in err and "--allow-requantize" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.gguf"]
    assert quantize_main([str(q8), str(out), "q4_k_m", "--allow-requantize"]) == 0
    with GGUFFile(out) as g:
        assert g.tensors["output.weight"].qtype.name == "Q6_K"
    assert quantize_main([str(q8), str(out), "q4_0", "--allow-requantize"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_bad_input_leaves_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 40)
    assert quantize_main([str(bad), str(tmp_path / "out.gguf"), "q8_0"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
    with pytest.raises(ConvertError, match="unknown output type"):
        quantize_gguf(bad, tmp_path / "out.gguf", "q9")
