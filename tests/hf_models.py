"""Tiny random Hugging Face models for the converter tests: tokenizers trained on a small corpus, transformers
models of each supported architecture saved in the checkpoint formats the converter reads."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    MptConfig,
    MptForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from runtime.convert.vocab import _LLAMA3_RE, _QWEN2_RE
from runtime.eval.llamacpp import open_llama
from runtime.model import load_model

ROOT = Path(__file__).resolve().parent.parent


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXT = ("Hello world! The quick brown fox jumps over the lazy dog, doesn't it? 1234567 + 89 = 1234656.\n"
        "\tIndented   spaces,   ünïcödé, 日本語のテキスト, emoji 🙂 and <|bos|> tags <b>bold</b>.")
CORPUS = [TEXT, "the lazy dog sleeps; the fox runs 42 times", "def f(x):\n    return x * 2  # code"] * 30
BOS, EOS = "<|bos|>", "<|eos|>"
N_TOKENS = 40  # teacher-forced tokens the logit checks run
MARGIN = 1e-3  # a top-2 gap that f32 rounding differences between engines (measured <= 2e-4) cannot close
MODELS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 4096}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "mixtral": (MixtralConfig, MixtralForCausalLM, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, {"head_dim": 64, "query_pre_attn_scalar": 64}),
    "gptneox": (GPTNeoXConfig, GPTNeoXForCausalLM, {"num_key_value_heads": 4, "use_parallel_residual": True,
                                                    "rotary_pct": 0.25}),
    "gpt2": (GPT2Config, GPT2LMHeadModel, {"num_key_value_heads": 4, "n_inner": 512, "bos_token_id": 0,
                                        "eos_token_id": 1}),
    "falcon": (FalconConfig, FalconForCausalLM, {"ffn_hidden_size": 512, "multi_query": True, "bias": False,
                                                 "new_decoder_architecture": False, "tie_word_embeddings": False}),
    "falcon40b": (FalconConfig, FalconForCausalLM, {"ffn_hidden_size": 512, "new_decoder_architecture": True,
                                                    "num_kv_heads": 2, "bias": False}),
    "phi2": (PhiConfig, PhiForCausalLM, {"partial_rotary_factor": 0.375}),
    "opt": (OPTConfig, OPTForCausalLM, {"ffn_dim": 512, "word_embed_proj_dim": 256, "bos_token_id": 0,
                                        "eos_token_id": 1, "pad_token_id": 1}),
    "mpt": (MptConfig, MptForCausalLM, {"d_model": 256, "n_heads": 4, "n_layers": 2, "max_seq_len": 256}),
    "mptclip": (MptConfig, MptForCausalLM, {"d_model": 256, "n_heads": 4, "n_layers": 2, "max_seq_len": 256,
                                            "attn_config": {"clip_qkv": 0.5}}),
    "bloom": (BloomConfig, BloomForCausalLM, {"seq_length": 256}),
}


def bpe_tokenizer(d, pre: str) -> int:
    """Train a byte-level BPE tokenizer.json with llama.cpp's `pre` pre-tokenizer; returns its vocab size."""
    split = {"llama-bpe": _LLAMA3_RE, "qwen2": _QWEN2_RE}.get(pre)
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    if split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS, EOS],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tcfg = {"bos_token": BOS, "eos_token": EOS, "chat_template": "{{ messages[0]['content'] }}"}
    if pre == "llama-bpe":  # BOS added by the post-processor, as in Llama 3 (tokenizer_config is silent)
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    else:
        tcfg["add_bos_token"] = False
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return tok.get_vocab_size()


def sentencepiece_tokenizer(d, add_dummy_prefix: bool = True) -> int:
    """Train a SentencePiece BPE model (byte fallback, no normalization, as Llama/Mistral's tokenizer.model;
    Gemma's has no dummy prefix)."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(d / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, minloglevel=2)
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                         "add_bos_token": True}))
    return 400


def save_model(d, kind: str, fmt: str, n_vocab: int, **overrides):
    """A tiny random model of `kind` saved to d as `safetensors`, `sharded` safetensors, `bf16` safetensors or
    `pytorch` .bin."""
    config_cls, model_cls, extra = MODELS[kind]
    torch.manual_seed(0)
    cfg = config_cls(**{"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": n_vocab,
                        "max_position_embeddings": 256} | extra | overrides)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so their conversion (gemma's + 1) matters
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or ".ln_" in name:
                p.normal_(0.0, 0.3)
    if fmt == "bf16":  # bf16 safetensors (numpy has no bf16); the reference runs the rounded weights in f32
        model = model.to(torch.bfloat16)
    model.save_pretrained(d, safe_serialization=fmt != "pytorch", max_shard_size="300KB" if fmt == "sharded" else "5GB")
    return model.float()


def checkpoint_fixture(**overrides):
    """A module-scoped fixture `checkpoints(kind, fmt) -> (model dir, transformers model)`, each built once;
    overrides go to the transformers config (e.g. initializer_range)."""
    @pytest.fixture(scope="module")
    def checkpoints(tmp_path_factory):
        made = {}

        def get(kind: str, fmt: str):
            if (kind, fmt) not in made:
                d = tmp_path_factory.mktemp(f"{kind}-{fmt}")
                n_vocab = sentencepiece_tokenizer(d) if kind == "mistral" else bpe_tokenizer(d, "llama-bpe")
                made[kind, fmt] = d, save_model(d, kind, fmt, n_vocab, **overrides)
            return made[kind, fmt]
        return get
    return checkpoints


def transformers_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)[None]).logits[0].double().numpy()  # (n_tokens, n_vocab)


def llamba_logits(path, tokens) -> np.ndarray:
    """Logits of every token in one batch; the KV cache in f32, since float weights are held to transformers' float32
    within 1e-4 (an f16 cache rounds K and V: ~2e-4; the cache types are tested in test_forward)."""
    m = load_model(path, type_k="f32", type_v="f32")
    return m.forward(np.asarray(tokens), 0, m.new_cache(), all_logits=True).astype(np.float64)


def assert_logits_match(got: np.ndarray, ref: np.ndarray, min_corr: float | None, label: str):
    """min_corr None: float types, max relative error < 1e-4; else Pearson correlation >= min_corr."""
    assert got.shape == ref.shape
    if min_corr is None:
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{label}: max relative error {rel:.2e}"
    else:
        corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
        assert corr >= min_corr, f"{label}: correlation {corr:.5f}"


def tokens_for(model) -> np.ndarray:
    """N_TOKENS fixed random token ids in the model's vocabulary."""
    return np.random.default_rng(7).integers(0, model.config.vocab_size, N_TOKENS)


def assert_greedy_matches(path, model, prompt: np.ndarray, n_new: int = 16):
    """llamba decoding the GGUF at path one token at a time (KV cache) picks transformers' greedy tokens."""
    with torch.no_grad():
        ref = model.generate(torch.tensor(prompt)[None], max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    m = load_model(path)
    kv = m.new_cache()
    logits, got = m.forward(prompt, 0, kv), []
    for i in range(n_new):
        got.append(int(np.argmax(logits)))
        logits = m.forward(np.array(got[-1:]), len(prompt) + i, kv)
    assert got == ref


def llama_cpp_logits(path, tokens) -> np.ndarray:
    """llama.cpp's logits at every position (reference CPU kernels, see open_llama); skips the test where
    llama-cpp-python is not installed."""
    pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')
    llm = open_llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True, verbose=False, n_threads=2)
    llm.eval(list(map(int, tokens)))
    logits = np.array(llm.scores[:len(tokens)], np.float64)  # (n_tokens, n_vocab)
    llm.close()
    return logits


def assert_same_top1(got: np.ndarray, ref: np.ndarray, decisive: np.ndarray):
    """got and ref (n_tokens, n_vocab) pick the same top-1 wherever `decisive` (one of them) has a top-2 gap above
    MARGIN (at least half the positions), and correlate >= 0.99999."""
    top2 = np.sort(decisive, axis=1)[:, -2:]  # (n_tokens, 2)
    clear = top2[:, 1] - top2[:, 0] > MARGIN
    assert clear.sum() >= len(decisive) // 2
    assert (ref.argmax(1) == got.argmax(1))[clear].all()
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] >= 0.99999
