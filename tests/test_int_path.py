"""The integer kernel path, llamba's default (activations quantized to 8 bits per block and integer dots, as
llama.cpp does), on the real models against the float oracles: transformers loading the same GGUF, and
llama.cpp (llama-cpp-python) running the same file, whose CPU kernels quantize activations the same way.

The 8-bit activations move logits by ~1e-2 relative, so bounds are looser than test_forward.py's (which runs the
float path). These are tests of llamba's own kernels: they run without llama.cpp. Only the comparison with
llama.cpp itself needs llama-cpp-python (the interop extra) and skips, saying so, without it.
"""

import numpy as np
import pytest
import torch
from gguf_reference import reference_model, reference_tokenizer
from test_forward import TEXT

import quant.matrix
from runtime.model import load_model

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]
# against transformers (float weights) over the 73-78 teacher-forced tokens: the mean KL divergence of the next-token
# distributions, the argmax agreement where the reference's top two logits are DECISIVE apart (closer ones flip
# with any last-bit change: an 8-bit activation moves by one step), and the min Pearson. Measured (llamba int /
# llama.cpp): KL SmolLM2 0.0033 / 0.0034, Qwen2.5-0.5B 0.0015 / 0.0014, Gemma 3 0.0048 / 0.0052; decisive agreement
# 1.000 / 1.000, 1.000 / 1.000, 0.985 / 1.000; Pearson 0.99910 / 0.99918, 0.99890 / 0.99896, 0.99898 / 0.99897.
KL_MAX, AGREE_MIN, CORR_MIN, DECISIVE = 0.007, 0.97, 0.998, 0.1


def _pearson_min(a, b) -> float:
    return min(np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module", params=MODELS)
def case(request, model_path):
    path = model_path(request.param)
    ids = reference_tokenizer(path)(TEXT, return_tensors="pt").input_ids  # (1, n)
    with torch.no_grad():
        ref = reference_model(path)(ids).logits[0].numpy()  # (n, n_vocab)
    ids = ids[0].numpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quant.matrix, "DEFAULT_PATH", "int")
        model = load_model(path, n_ctx=256)
        # a batch of >= INT_BLAS_MIN_TOKENS tokens multiplies dequantized tiles with sgemm (float math): this prompt
        # pass runs the integer matrix kernels, as prompts up to that length do
        assert len(ids) < quant.matrix.INT_BLAS_MIN_TOKENS
        ours = model.forward(ids, 0, model.new_cache(), all_logits=True)  # (n, n_vocab)
    assert {layer.w.wq.path for layer in model.layers} == {"int"}
    return path, model, ids, ref, ours


def _log_softmax(a):
    a = a.astype(np.float64)
    a = a - a.max(-1, keepdims=True)
    return a - np.log(np.exp(a).sum(-1, keepdims=True))


def _metrics(a, ref) -> tuple:
    """(mean KL(ref || a), argmax agreement where ref's top two are DECISIVE apart, min per-position Pearson) of two
    (n, n_vocab) logit arrays."""
    la, lr = _log_softmax(a), _log_softmax(ref)
    top2 = np.sort(ref, -1)[:, -2:]
    decisive = top2[:, 1] - top2[:, 0] >= DECISIVE
    return (np.mean(np.sum(np.exp(lr) * (lr - la), -1)), np.mean((a.argmax(-1) == ref.argmax(-1))[decisive]),
            _pearson_min(a, ref))


def test_close_to_transformers(case):
    """The integer path against the float model (transformers on the same GGUF), without any peer installed."""
    path, _, _, ref, ours = case
    kl, agree, corr = _metrics(ours, ref)
    print(f"{path.name}: vs transformers {kl:.5f} / {agree:.3f} / {corr:.5f} (KL / decisive argmax agreement / "
          "min Pearson)")
    assert kl <= KL_MAX and agree >= AGREE_MIN and corr >= CORR_MIN


def test_as_close_to_transformers_as_llama_cpp(case):
    """8-bit activations cost llamba what they cost llama.cpp, measured against the float model."""
    pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')
    from test_interop import llama_cpp_logits

    path, _, ids, ref, ours = case
    theirs = llama_cpp_logits(path, ids)
    (kl, agree, corr), (kl_cpp, agree_cpp, corr_cpp), (kl_pair, agree_pair, corr_pair) = (
        _metrics(ours, ref), _metrics(theirs, ref), _metrics(ours, theirs))
    print(f"{path.name}: vs transformers {kl:.5f} / {agree:.3f} / {corr:.5f}, llama.cpp vs transformers "
          f"{kl_cpp:.5f} / {agree_cpp:.3f} / {corr_cpp:.5f}, llamba vs llama.cpp {kl_pair:.5f} / {agree_pair:.3f} / "
          f"{corr_pair:.5f} (KL / decisive argmax agreement / min Pearson)")
    assert kl <= 1.25 * kl_cpp and agree >= min(AGREE_MIN, agree_cpp - 0.03) and corr >= min(CORR_MIN, corr_cpp - 5e-4)
    assert agree_pair >= 0.9 and corr_pair >= 0.998


def test_decoding_matches_prompt_pass(case):
    """One token at a time (matrix-vector kernels) against the prompt batch (matrix kernels). The kernels agree
    exactly (test_matvec), but the float attention rounds differently for 1 and n tokens, and a 1e-7 change can
    move an 8-bit activation by one step: so decoding follows the batch as closely as llama.cpp's two passes do,
    not to float rounding (the float path does: test_forward)."""
    _, model, ids, _, full = case
    n, kv = len(ids) - 16, model.new_cache()
    model.forward(ids[:n], 0, kv)
    steps = np.stack([model.forward(ids[i:i + 1], i, kv) for i in range(n, len(ids))])  # (16, n_vocab)
    _, agree, corr = _metrics(steps, full[n:])
    print(f"decoding vs batch: decisive argmax agreement {agree:.3f}, min Pearson {corr:.5f}")
    assert agree >= 0.8 and corr >= 0.997  # measured: 1.000 and 0.99790 (gemma, AVX-512 VNNI kernels)-0.99929
