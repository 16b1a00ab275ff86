"""Files written by our converter and quantizer load in llama.cpp (llama-cpp-python) and give llamba's logits.

Tiny random transformers models (tests/hf_models.py, weights drawn with std 0.06 so that their logits are
decisive) of each architecture are converted at every output type and run over 64 random tokens in llama.cpp
and in llamba; the real registry GGUFs and a SmolLM2 file re-quantized by tools/quantize.py are run on a short
prompt. llama.cpp quantizes activations to 8 bits in its quantized matmuls and random models have near-ties, so
top-1 must agree at every position whose top-2 margin is clear (> MARGIN) and at >= 90% of all positions.
Measured (llamba vs llama.cpp, 64 positions): logit correlation f32 / f16 1.000000, q8_0 / q4_0 0.99987-0.99996,
q4_k_m 0.99971-0.99987 (mixtral, 4 experts top-2: q4_0 0.99922); top-1 agreement 100% at the 30-64 clear
positions, 95.3-100% overall (lowest: llama / mistral q4_k_m). Real models, 5-token prompt: same top-1 at every
position, correlation SmolLM2 0.9986, Qwen2.5-Coder-0.5B 0.9996.
"""

import ctypes

import numpy as np
import pytest
from hf_models import checkpoint_fixture, llamba_logits, load_tool

from quant import GGMLType, dequantize, quantize
from runtime.convert import convert
from runtime.convert.requantize import quantize_gguf
from runtime.eval.llamacpp import open_llama
from runtime.gguf import GGUFFile
from runtime.tokenizer import Tokenizer

llama_cpp = pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')

N_TOKENS = 64
MARGIN = 0.05  # a top-2 gap the two engines' rounding differences cannot close
PROMPT = "The capital of France is"
checkpoints = checkpoint_fixture(initializer_range=0.06)
quantize_main = load_tool("quantize").main


def llama_cpp_logits(path, tokens) -> np.ndarray:
    """llama.cpp's logits at every position (reference CPU kernels, see open_llama)."""
    llm = open_llama(model_path=str(path), n_ctx=max(128, len(tokens)), n_batch=max(128, len(tokens)),
                     logits_all=True, verbose=False, n_threads=2)
    llm.eval(list(map(int, tokens)))
    logits = np.array(llm.scores[: len(tokens)], np.float64)  # (n_tokens, n_vocab)
    llm.close()
    return logits


def compare(path, tokens) -> tuple:
    """(top-1 agreement over all positions, over clear-margin positions, number of those, logit correlation)."""
    ref, got = llama_cpp_logits(path, tokens), llamba_logits(path, tokens)
    assert ref.shape == got.shape
    top2 = np.sort(got, axis=1)[:, -2:]  # (n_tokens, 2)
    clear = top2[:, 1] - top2[:, 0] > MARGIN
    agree = ref.argmax(1) == got.argmax(1)
    return agree.mean(), agree[clear].mean(), int(clear.sum()), np.corrcoef(ref.ravel(), got.ravel())[0, 1]


@pytest.mark.parametrize("kind", ["llama", "mistral", "mixtral", "qwen2", "gemma3"])
def test_converted_files_run_the_same_in_llama_cpp(checkpoints, tmp_path, kind):
    d, model = checkpoints(kind, "safetensors")
    tokens = np.random.default_rng(7).integers(0, model.config.vocab_size, N_TOKENS)
    for outtype, min_corr in [("f32", 0.99999), ("f16", 0.9999), ("q8_0", 0.999), ("q4_0", 0.999),
                              ("q4_k_m", 0.999)]:
        out = tmp_path / f"{outtype}.gguf"
        convert(d, out, outtype, progress=False, log=lambda s: None)
        overall, clear, n_clear, corr = compare(out, tokens)
        what = (f"{kind} {outtype}: top-1 agreement {overall:.3f}, {clear:.3f} at {n_clear} clear positions, "
                f"corr {corr:.6f}")
        assert n_clear >= 5 and clear == 1.0 and overall >= 0.9 and corr >= min_corr, what


def _prompt_tokens(path) -> list:
    with GGUFFile(path) as g:
        return Tokenizer.from_gguf(g.metadata).encode(PROMPT)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_real_models_agree(model_path, name):
    path = model_path(name)
    tokens = _prompt_tokens(path)
    ref, got = llama_cpp_logits(path, tokens), llamba_logits(path, tokens)
    assert ref[-1].argmax() == got[-1].argmax()
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] >= 0.99


def test_requantized_file_loads_in_llama_cpp(model_path, tmp_path):
    out = tmp_path / "smollm2-q8_0.gguf"
    assert quantize_main([str(model_path("smollm2-135m-instruct")), str(out), "q8_0", "--allow-requantize"]) == 0
    tokens = _prompt_tokens(out)
    ref, got = llama_cpp_logits(out, tokens), llamba_logits(out, tokens)
    assert ref[-1].argmax() == got[-1].argmax()
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] >= 0.99


LLAMA_FTYPE_MOSTLY_IQ4_NL = 25


def test_llama_cpp_iq4_nl_file(checkpoints, tmp_path):
    """A file llama.cpp quantized to IQ4_NL itself (llama_model_quantize, ftype 25, from our f32 file): llamba
    loads it and gives llama.cpp's logits; our iq4_nl plan picks llama.cpp's type per tensor, our IQ4_NL quantizer
    writes llama.cpp's bytes for nearly every block, and our converter's iq4_nl file runs the same in llama.cpp.
    Measured: 40064 of 40064 blocks equal; logits (both files) top-1 98.4% overall, 100% at the 35 clear positions,
    correlation 0.99982. (Equality is not required of every block: a build with FMA contraction may round a
    weighted sum differently.)"""
    d, model = checkpoints("llama", "safetensors")
    tokens = np.random.default_rng(7).integers(0, model.config.vocab_size, N_TOKENS)
    f32 = tmp_path / "f32.gguf"
    convert(d, f32, "f32", progress=False, log=lambda s: None)
    theirs = tmp_path / "iq4_nl-llama.cpp.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE_MOSTLY_IQ4_NL
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0

    plan = quantize_gguf(f32, f32, "iq4_nl", dry_run=True, log=lambda s: None)
    with GGUFFile(theirs) as g, GGUFFile(f32) as src:
        types = {n: t.qtype.name for n, t in g.tensors.items()}
        assert {t.name: t.qtype.name for t in plan.tensors} == types
        same = total = 0
        for name, t in g.tensors.items():
            if t.qtype == GGMLType.IQ4_NL:
                x = dequantize(src.tensors[name].raw, GGMLType.F32, t.shape[-1])
                ours = quantize(x, "IQ4_NL").reshape(-1, 18)
                same += int((ours == np.asarray(t.raw).reshape(-1, 18)).all(axis=1).sum())
                total += ours.shape[0]
    assert "IQ4_NL" in types.values() and total > 0
    assert same / total > 0.99, f"{same} of {total} IQ4_NL blocks equal to llama.cpp's"

    ours = tmp_path / "iq4_nl.gguf"
    convert(d, ours, "iq4_nl", progress=False, log=lambda s: None)
    for path in (theirs, ours):
        overall, clear, n_clear, corr = compare(path, tokens)
        what = f"{path.name}: top-1 agreement {overall:.3f}, {clear:.3f} at {n_clear} clear positions, corr {corr:.6f}"
        assert n_clear >= 5 and clear == 1.0 and overall >= 0.9 and corr >= 0.999, what
