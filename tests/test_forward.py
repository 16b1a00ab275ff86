"""The forward pass against Hugging Face transformers loading the SAME GGUF file (dequantized to float32).

Token ids come from transformers' tokenizer of that GGUF, so these tests do not depend on ours. Each
transformers model is loaded once (module-scoped fixture), its reference outputs computed, and freed.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf import quants as gq
from gguf_reference import reference_model, reference_tokenizer
from numba import njit
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import runtime.model
from runtime.archs.base import RopeScaling
from runtime.errors import ContextOverflowError, LlambaError, UnsupportedError
from runtime.gguf import GGUFFile
from runtime.kvcache import KVCache, cache_types, converted, store
from runtime.layers import ATT_PARALLEL, _exp, alibi_slopes, attention, layer_norm, rope_frequencies
from runtime.model import load_model

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
        "movable metal type, oil-based ink and a wooden screw press. Within fifty years presses were working in "
        "more than two hundred European cities, the price of books fell sharply, and pamphlets carried news, "
        "sermons and arguments faster than any scribe could copy them. Historians still debate how much")
PROMPTS = ["Once upon a time", "def fibonacci(n):", "The capital of France is"]
MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]
GEMMA_TEST_WINDOW = 16  # shrunk so that a short text crosses gemma3's sliding window


@dataclass
class Case:
    model: runtime.model.Model
    ids: np.ndarray  # (n,) teacher-forced text
    logits: np.ndarray  # (n, n_vocab) transformers' logits
    greedy: list  # [(prompt ids, 16 greedy ids)] from transformers' generate
    swa_logits: np.ndarray | None  # gemma3 only: logits with GEMMA_TEST_WINDOW


def _hf_gemma_window(hf, window: int):
    hf.config.sliding_window = window
    for layer in hf.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = window


CACHE_KINDS = ["f32", "f16", "q8_0"]  # the KV cache types


def _cache(rng, shape, kind):
    """A layer's cache (n_kv, n_ctx, ...) of random values as the cache type holds them, and the float32 values it
    stands for: f16 rounded by numpy, q8_0 blocks written and read by gguf.quants (the block format's oracle)."""
    values = rng.standard_normal(shape).astype(np.float32)
    if kind == "q8_0":
        blocks = gq.quantize(values, GGMLQuantizationType.Q8_0)
        return blocks, gq.dequantize(blocks, GGMLQuantizationType.Q8_0).astype(np.float32)
    held = values.astype(np.float16 if kind == "f16" else np.float32)
    return held, held.astype(np.float32)


@pytest.fixture(scope="module", params=MODELS)
def case(request, model_path):
    path = model_path(request.param)
    hf, tok = reference_model(path), reference_tokenizer(path)
    ids = tok(TEXT, return_tensors="pt").input_ids  # (1, n)
    assert ids.shape[1] >= 64
    with torch.no_grad():
        logits = hf(ids).logits[0].numpy()
        greedy = []
        for prompt in PROMPTS:
            p = tok(prompt, return_tensors="pt").input_ids
            out = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=16, min_new_tokens=16,
                              do_sample=False)
            greedy.append((p[0].numpy(), out[0, p.shape[1]:].tolist()))
        swa_logits = None
        if hf.config.model_type == "gemma3_text":
            window = hf.config.sliding_window
            _hf_gemma_window(hf, GEMMA_TEST_WINDOW)
            swa_logits = hf(ids).logits[0].numpy()
            _hf_gemma_window(hf, window)  # the reference model is shared: restore it
    yield Case(load_model(path, n_ctx=256), ids[0].numpy(), logits, greedy, swa_logits)


def _assert_logits_close(ours: np.ndarray, ref: np.ndarray, min_agree=0.98, min_corr=0.99):
    agree = np.mean(ours.argmax(-1) == ref.argmax(-1))
    corr = min(np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True))
    assert agree >= min_agree and corr >= min_corr, f"argmax agreement {agree:.3f}, min Pearson {corr:.5f}"


def test_logits_match_transformers(case):
    # measured: argmax agreement 1.0 and min Pearson r > 0.99999 on all three models
    kv = case.model.new_cache()
    ours = case.model.forward(case.ids, 0, kv, all_logits=True)  # (n, n_vocab)
    assert ours.shape == case.logits.shape and ours.dtype == np.float32
    _assert_logits_close(ours, case.logits)
    last = case.model.forward(case.ids, 0, kv)
    np.testing.assert_allclose(last, ours[-1], rtol=0, atol=1e-4 * np.abs(ours[-1]).max())
    if case.swa_logits is not None:
        _check_gemma3_sliding_window(case)


def _check_gemma3_sliding_window(case):
    """Local layers see only the last `sliding_window` positions, global layers (il % 6 == 5) all:
    prompt batch then decoding, with the window shrunk on both sides so that the text crosses it."""
    gguf = GGUFFile(case.model.gguf.path)
    gguf.metadata["gemma3.attention.sliding_window"] = GEMMA_TEST_WINDOW
    model = load_model(gguf, n_ctx=256)
    n_prompt, kv = 40, model.new_cache()
    ours = [model.forward(case.ids[:n_prompt], 0, kv, all_logits=True)]
    ours += [model.forward(case.ids[i:i + 1], i, kv)[None] for i in range(n_prompt, len(case.ids))]
    _assert_logits_close(np.concatenate(ours), case.swa_logits)
    assert np.abs(case.swa_logits - case.logits).max() > 1.0  # the window matters


def test_kv_cache_decoding_matches_full_pass(case, monkeypatch):
    monkeypatch.setattr(runtime.model, "UBATCH", 7)  # the full pass runs as several chunks too
    n, n_prompt, kv = 30, 11, case.model.new_cache()
    full = case.model.forward(case.ids[:n], 0, kv, all_logits=True)  # (n, n_vocab)
    steps = [case.model.forward(case.ids[:n_prompt], 0, kv)]
    steps += [case.model.forward(case.ids[i:i + 1], i, kv) for i in range(n_prompt, n)]
    stepwise = np.stack(steps)  # logits of tokens n_prompt-1 .. n-1
    np.testing.assert_allclose(stepwise, full[n_prompt - 1:], rtol=0, atol=2e-3 * np.abs(full).max())


@pytest.mark.parametrize("cache_type", ["f16", "f32"])  # q8_0 (4 more bits of noise) may part from a near-tie
def test_greedy_generation_matches_transformers(case, cache_type):
    model = load_model(case.model.gguf.path, n_ctx=256, type_k=cache_type, type_v=cache_type)
    kv = model.new_cache()
    for prompt, expected in case.greedy:
        ids, logits = list(prompt), model.forward(prompt, 0, kv)
        for _ in range(16):
            ids.append(int(logits.argmax()))
            logits = model.forward(ids[-1:], len(ids) - 1, kv)
        assert ids[len(prompt):] == expected


def test_kv_cache_types(model_path):
    """f16 (the default, llama.cpp's) holds the keys and values an f32 cache holds rounded to nearest even, q8_0 them
    quantized as gguf.quants quantizes Q8_0; names and llama_cpp.Llama's GGML type numbers are accepted, anything
    else is refused by name."""
    path = model_path("smollm2-135m-instruct")
    models = {kind: load_model(path, n_ctx=64, type_k=kind, type_v=kind) for kind in ("f16", "q8_0")}
    models["f32"] = load_model(path, n_ctx=64, type_k=0, type_v="f32")
    caches = {kind: m.new_cache() for kind, m in models.items()}
    assert [(c.k.dtype, c.v.dtype, c.k.shape[-1]) for c in caches.values()] == [
        (np.float16, np.float16, 64), (np.uint8, np.uint8, 68), (np.float32, np.float32, 64)]
    assert caches["f16"].nbytes * 2 == caches["f32"].nbytes == caches["q8_0"].nbytes * 64 // 17
    ids = np.arange(100, 140)
    logits = {kind: m.forward(ids, 0, caches[kind]) for kind, m in models.items()}
    c32 = caches["f32"]
    for a, b in ((caches["f16"].k, c32.k), (caches["f16"].v, c32.v)):  # layer 0 sees the same input in all
        np.testing.assert_array_equal(a[0, :, :40], b[0, :, :40].astype(np.float16))
    for a, b in ((caches["q8_0"].k, c32.k), (caches["q8_0"].v, c32.v)):
        np.testing.assert_array_equal(a[0, :, :40], gq.quantize(b[0, :, :40], GGMLQuantizationType.Q8_0))
    for kind, min_corr in (("f16", 0.9999), ("q8_0", 0.999)):
        assert np.corrcoef(logits[kind], logits["f32"])[0, 1] > min_corr
        assert logits[kind].argmax() == logits["f32"].argmax()
    assert load_model(path, n_ctx=8, type_k=1, type_v=8).new_cache().v.dtype == np.uint8
    for bad in ("q4_0", 2, "float16"):
        with pytest.raises(LlambaError, match=f"unsupported KV cache type {bad!r}"):
            load_model(path, n_ctx=8, type_v=bad)
    with pytest.raises(LlambaError, match="q8_0 KV cache needs a head size that is a multiple of 32, .* 48"):
        KVCache(1, 1, 4, 48, "f16", "q8_0")
    with pytest.raises(LlambaError, match="q8_0 KV cache with GPU offload is not supported"):
        cache_types("q8_0", "f16", 64, offload=True)


@pytest.mark.parametrize("kind", CACHE_KINDS)
def test_cache_store_rounds_as_the_oracles(rng, kind):
    """A layer's cache written at positions 3..7 holds the values numpy rounds to f16 or gguf.quants quantizes to
    Q8_0, and is read back as the values those stand for; the other positions keep their zeros."""
    values = rng.standard_normal((5, 2, 64)).astype(np.float32)  # (m, n_kv, head_dim) as a layer computes them
    cache = KVCache(1, 2, 12, 64, kind, kind).k[0]
    store(cache, 3, values)
    held, stands_for = {"f32": (values, values), "f16": (values.astype(np.float16),) * 2,
                        "q8_0": (gq.quantize(values, GGMLQuantizationType.Q8_0),
                                 gq.dequantize(gq.quantize(values, GGMLQuantizationType.Q8_0),
                                               GGMLQuantizationType.Q8_0))}[kind]
    np.testing.assert_array_equal(cache[:, 3:8], held.transpose(1, 0, 2))
    np.testing.assert_array_equal(converted(cache[:, 3:8], np.float32, 64),
                                  stands_for.transpose(1, 0, 2).astype(np.float32))
    assert not cache[:, :3].any() and not cache[:, 8:].any()


def test_context_overflow(model_path):
    model = load_model(model_path("smollm2-135m-instruct"), n_ctx=8)
    assert model.n_ctx == 8
    kv = model.new_cache()
    model.forward(np.arange(8), 0, kv)
    with pytest.raises(ContextOverflowError, match="context holds 8"):
        model.forward([1], 8, kv)
    with pytest.raises(ContextOverflowError):
        model.forward(np.arange(9), 0, kv)
    with pytest.raises(ContextOverflowError, match="context holds 4"):
        model.forward(np.arange(5), 0, model.new_cache(4))
    with pytest.raises(ContextOverflowError, match="loaded for 1..8"):
        model.new_cache(9)


def test_context_is_capped_and_its_memory_checked(model_path):
    """-c 1000000000 built the KV cache and RoPE tables eagerly (7.7 GB, then MemoryError); n_ctx is capped at the
    model's context_length, and a cache larger than the memory available is refused before it is allocated."""
    path = model_path("smollm2-135m-instruct")  # llama.context_length 8192
    assert load_model(path, n_ctx=8192).n_ctx == 8192
    with pytest.raises(ContextOverflowError, match="n_ctx 8193 exceeds the 8192 positions"):
        load_model(path, n_ctx=8193)
    with pytest.raises(LlambaError, match="positive integer"):
        load_model(path, n_ctx=True)
    config = load_model(path, n_ctx=8).config
    wide = dataclasses.replace(config, n_layer=10**6)  # 360 TB of f16 KV cache at 8192 positions
    with pytest.raises(LlambaError, match=r"needs \d+\.\d GiB for its KV cache"):
        runtime.model._check_memory(wide, 8192, "f16", "f16")
    runtime.model._check_memory(config, 8192, "f32", "f32")  # 0.4 GB: fits


def test_default_context_and_attributes(model_path):
    model = load_model(model_path("smollm2-135m-instruct"))
    assert (model.arch, model.n_ctx, model.n_vocab) == ("llama", 4096, 49152)
    assert (model.config.n_layer, model.config.n_head, model.config.n_head_kv) == (30, 9, 3)


def _write_gguf(path, arch: str, tensors: dict):
    w = GGUFWriter(str(path), arch)
    for key, value in {"context_length": 64, "embedding_length": 256, "block_count": 1, "feed_forward_length": 256,
                       "attention.head_count": 2}.items():
        w.add_uint32(f"{arch}.{key}", value)
    for name, (array, qtype) in tensors.items():
        w.add_tensor(name, array, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "m.gguf"
    _write_gguf(path, "mamba", {"token_embd.weight": (np.zeros((4, 256), np.float32), None)})
    with pytest.raises(UnsupportedError,
                       match=r"'mamba'.*bloom, falcon, gemma3, gpt2, gptneox, llama, mpt, opt, phi2, qwen2"):
        load_model(path)


def test_unsupported_tensor_type(tmp_path):
    path = tmp_path / "m.gguf"
    q8_k = np.zeros((4, 292), np.uint8)  # 4 rows of one Q8_K block (an activation-only type)
    _write_gguf(path, "llama", {"token_embd.weight": (q8_k, GGMLQuantizationType.Q8_K)})
    with pytest.raises(UnsupportedError, match="token_embd.weight.*Q8_K"):
        load_model(path)


@pytest.mark.parametrize("kind, params", [
    ("linear", {"rope_type": "linear", "factor": 4.0}),
    ("yarn", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048}),
])
def test_rope_scaling_matches_transformers(kind, params):
    base, head_dim = 500000.0, 128
    config = LlamaConfig(hidden_size=1024, num_attention_heads=8, max_position_embeddings=16384,
                         rope_parameters={"rope_theta": base, **params})
    inv_freq, attn_factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    scaling = RopeScaling(kind, params["factor"], params.get("original_max_position_embeddings", 0))
    freqs, mscale = rope_frequencies(head_dim, base, scaling)
    np.testing.assert_allclose(freqs, inv_freq.double().numpy(), rtol=1e-6)
    assert mscale == pytest.approx(attn_factor)


def test_llama3_rope_freqs_match_transformers():
    """Llama 3.1 GGUFs carry llama3 RoPE scaling as a `rope_freqs` tensor of per-pair divisors, written by
    llama.cpp's converter as 1 / (transformers' inv_freq / unscaled freq); the runtime divides by it."""
    base, head_dim = 500000.0, 128
    params = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=1024, num_attention_heads=8, max_position_embeddings=131072,
                         rope_parameters={"rope_theta": base, **params})
    inv_freq = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")[0].double().numpy()  # (head_dim/2,)
    plain, _ = rope_frequencies(head_dim, base)
    # llama.cpp's converter: wavelengths shorter than original/high_freq_factor keep their frequency (factor 1),
    # longer than original/low_freq_factor are divided by `factor`, a smooth blend in between
    wavelen = 2 * np.pi / plain
    smooth = (params["original_max_position_embeddings"] / wavelen - 1.0) / (4.0 - 1.0)
    rope_freqs = np.where(wavelen < 8192 / 4.0, 1.0,
                          np.where(wavelen > 8192 / 1.0, 8.0, 1 / ((1 - smooth) / 8.0 + smooth)))
    freqs, mscale = rope_frequencies(head_dim, base, None, rope_freqs.astype(np.float32))
    np.testing.assert_allclose(freqs, inv_freq, rtol=1e-6)
    assert mscale == 1.0 and (rope_freqs > 1).any() and (rope_freqs == 1).any()


def test_layer_norm_matches_torch(rng):
    x = rng.standard_normal((5, 3, 48)).astype(np.float32)
    w, b = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (48,), torch.from_numpy(w), torch.from_numpy(b), 1e-5)
    np.testing.assert_allclose(layer_norm(x, w, b, 1e-5, np.empty_like(x)), ref.numpy(), atol=2e-5)


@pytest.mark.parametrize("kind", CACHE_KINDS)
@pytest.mark.parametrize("window", [0, 3])
def test_attention_matches_torch(rng, window, kind):
    """GQA (6 query heads over 2 kv heads), 5 queries at positions 4..8, causal and sliding-window masks; torch
    computes in float32 from the values the cache holds."""
    n, pos, n_head, n_kv, hd = 5, 4, 6, 2, 32
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    (kc, k), (vc, v) = (_cache(rng, (n_kv, 16, hd), kind) for _ in range(2))
    ours = attention(q, kc, vc, pos, 0.3, window, np.empty((n, n_head * hd), np.float32))
    qpos, kpos = torch.arange(pos, pos + n)[:, None], torch.arange(pos + n)[None, :]
    visible = (kpos <= qpos) & ((qpos - kpos < window) if window else True)  # (n, pos + n)
    rep = n_head // n_kv
    kt, vt = (torch.from_numpy(a[:, :pos + n]).repeat_interleave(rep, 0) for a in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q).transpose(0, 1), kt, vt,
                                                           attn_mask=visible, scale=0.3)  # (n_head, n, hd)
    np.testing.assert_allclose(ours, ref.transpose(0, 1).reshape(n, -1).numpy(), atol=1e-5)


@pytest.mark.parametrize("window, alibi", [(0, False), (100, False), (0, True)])
def test_long_prompt_attention_matches_torch(rng, window, alibi):
    """300 queries at positions 40..339 (GQA 8 over 2 heads): large enough to run as PROMPT_TASKS row blocks on the
    attention's threads, each block without the keys past its last row (causal, sliding-window, ALiBi)."""
    from runtime.layers import PROMPT_SPLIT

    n, pos, n_head, n_kv, hd = 300, 40, 8, 2, 64
    assert n * (pos + n) * n_head * hd >= PROMPT_SPLIT
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    (kc, k), (vc, v) = (_cache(rng, (n_kv, 400, hd), "f32") for _ in range(2))
    slopes = alibi_slopes(n_head, 8.0) if alibi else None
    ours = attention(q, kc, vc, pos, 0.3, window, np.empty((n, n_head * hd), np.float32), slopes)
    qpos, kpos = torch.arange(pos, pos + n)[:, None], torch.arange(pos + n)[None, :]
    visible = (kpos <= qpos) & ((qpos - kpos < window) if window else True)  # (n, pos + n)
    bias = torch.where(visible, 0.0, -torch.inf)[None]
    bias = bias + (0 if slopes is None else torch.from_numpy(slopes)[:, None, None] * (kpos - qpos)[None])
    rep = n_head // n_kv
    kt, vt = (torch.from_numpy(a[:, :pos + n]).repeat_interleave(rep, 0) for a in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q).transpose(0, 1), kt, vt,
                                                           attn_mask=bias.float(), scale=0.3)  # (n_head, n, hd)
    np.testing.assert_allclose(ours, ref.transpose(0, 1).reshape(n, -1).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", CACHE_KINDS)
@pytest.mark.parametrize("hd", [32, 128])  # the decode kernel's tasks on the calling thread, and in parallel
@pytest.mark.parametrize("window, alibi", [(0, False), (300, False), (0, True)])
def test_decode_attention_matches_torch(rng, window, alibi, hd, kind):
    """One query over 600 cached positions (three key chunks of the decode kernel, merged): GQA, sliding window,
    ALiBi slopes (scores spread over 300: the softmax's exp sees arguments down to its underflow clamp); torch
    computes in float32 from the values the cache holds."""
    pos, n_head, n_kv = 599, 8, 2
    assert ((pos + 1) * n_head * hd >= ATT_PARALLEL) == (hd == 128)
    q = rng.standard_normal((1, n_head, hd)).astype(np.float32)
    (kc, k), (vc, v) = (_cache(rng, (n_kv, 640, hd), kind) for _ in range(2))
    slopes = alibi_slopes(n_head, 8.0) if alibi else None
    ours = attention(q, kc, vc, pos, 0.3, window, np.empty((1, n_head * hd), np.float32), slopes)
    kpos = torch.arange(pos + 1)
    bias = torch.where((pos - kpos < window) if window else kpos >= 0, 0.0, -torch.inf)  # (pos + 1,)
    bias = bias[None, None, :] + (0 if slopes is None else torch.from_numpy(slopes)[:, None, None] * (kpos - pos))
    rep = n_head // n_kv
    kt, vt = (torch.from_numpy(a[:, :pos + 1]).repeat_interleave(rep, 0) for a in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q).transpose(0, 1), kt, vt,
                                                           attn_mask=bias.float(), scale=0.3)  # (n_head, 1, hd)
    np.testing.assert_allclose(ours, ref.transpose(0, 1).reshape(1, -1).numpy(), atol=1e-5)


@njit
def _softmax_exp(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _exp(x[i])
    return out


def test_softmax_exp_within_two_ulp():
    """The decode kernel's vectorizable exp against float64's over its whole range x <= 0 (every float32 from -87 to
    0 in steps of 2^-10, and the binade ends), and its clamp below -87."""
    x = np.concatenate([np.arange(-87 * 1024, 1) / np.float32(1024), -np.ldexp(1.0, np.arange(-30, 7))])
    x = x.astype(np.float32)
    ours, ref = _softmax_exp(x), np.exp(x.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert (np.abs(ours - ref) <= 2 * ulp).all(), np.abs(ours - ref)[np.abs(ours - ref) > 2 * ulp][:5]
    assert _softmax_exp(np.float32([-88.0, -1e30, -np.inf])).tolist() == [np.float32(np.exp(-87.0))] * 3
