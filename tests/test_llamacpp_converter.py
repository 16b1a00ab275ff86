"""GGUF files written by llama.cpp's own converter (convert_hf_to_gguf.py with its gguf-py, from the
llama-cpp-python 0.3.36 source package) load in llamba and match transformers.

Tiny random transformers checkpoints of every architecture llama.cpp shares with llamba (OPT has no llama.cpp
support), plus Llama with llama3 RoPE scaling (a `rope_freqs` tensor) and Gemma 3 with an 8-token sliding
window, are converted by llama.cpp's script in one child process (tests/llamacpp_convert_driver.py; it also
holds the shims the script needs for transformers 5 and for a freshly trained vocabulary). The models follow
the conventions that converter assumes of the real checkpoints: feed-forward 4 x n_embd for GPT-2, Falcon and
Phi-2 (it writes 4 x n_embd whatever the config says), no grouped-query attention for Phi-2 (it writes
head_count_kv = head_count), the tokenizer's special-token ids in the Gemma 3 config (it reads them there).
llamba runs the files over 40 teacher-forced token ids; transformers on the original weights is the oracle;
llama.cpp itself runs the f32 files, which shows the harness gives files llama.cpp accepts.
Measured (40 tokens): f32 max relative error 3.5e-7 to 9.4e-7 for every variant; q8_0 correlation 0.99976
(llama), 0.99985 (mixtral), 0.99995 (gptneox), 0.99994 (bloom); llama.cpp on the f32 files: correlation with
transformers >= 0.9999998, same top-1 everywhere. The same weights without llama3 scaling are off by 2.8e-2.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from hf_models import (
    EOS,
    TEXT,
    assert_greedy_matches,
    assert_logits_match,
    assert_same_top1,
    bpe_tokenizer,
    llama_cpp_logits,
    llamba_logits,
    save_model,
    sentencepiece_tokenizer,
    tokens_for,
    transformers_logits,
)
from tokenizers import Tokenizer as HFTokenizer
from vocab_files import llama_cpp_converter_dir

from runtime.gguf import GGUFFile
from runtime.tokenizer import Tokenizer

DRIVER = Path(__file__).with_name("llamacpp_convert_driver.py")
GEMMA_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # the tiny SentencePiece model's ids
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # written as a rope_freqs tensor
VARIANTS = {  # name -> (hf_models kind, config overrides: what llama.cpp's converter assumes of real checkpoints)
    "llama": ("llama", {}),
    "llama3-rope": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "gemma3": ("gemma3", GEMMA_IDS),
    "gemma3-swa": ("gemma3", GEMMA_IDS | {"sliding_window": 8, "num_hidden_layers": 6}),  # layer 5 global
    "mixtral": ("mixtral", {}),
    "gptneox": ("gptneox", {}),
    "gpt2": ("gpt2", {"n_inner": 1024}),
    "falcon": ("falcon", {"ffn_hidden_size": 1024}),
    "falcon40b": ("falcon40b", {"ffn_hidden_size": 1024}),
    "phi2": ("phi2", {"intermediate_size": 1024, "num_key_value_heads": 4}),
    "mpt": ("mpt", {}),
    "mptclip": ("mptclip", {}),
    "bloom": ("bloom", {}),
}
KINDS = tuple(VARIANTS)
SPM_KINDS = {"mistral": True, "gemma3": False}  # hf_models kinds with a SentencePiece tokenizer.model -> dummy prefix
Q8_KINDS = ("llama", "mixtral", "gptneox", "bloom")
GREEDY_KINDS = ("llama3-rope", "gemma3-swa", "gpt2", "falcon")


def _checkpoint(d: Path, variant: str):
    """A tiny random model of `variant` and its tokenizer saved to d; returns the transformers model."""
    kind, overrides = VARIANTS[variant]
    if kind in SPM_KINDS:
        n_vocab = sentencepiece_tokenizer(d, add_dummy_prefix=SPM_KINDS[kind])
    else:
        n_vocab = bpe_tokenizer(d, "llama-bpe")
        # transformers 5's Qwen2/GPT-2/GPT-NeoX tokenizer classes add "<|endoftext|>" (id 400, past the model's
        # vocabulary, which the converter asserts against) as unk/pad token unless the config names one
        cfg = json.loads((d / "tokenizer_config.json").read_text()) | {"unk_token": EOS, "pad_token": EOS}
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return save_model(d, kind, "safetensors", n_vocab, initializer_range=0.06, **overrides)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{kind: (checkpoint dir, transformers model, {outtype: GGUF path}, {outtype: converter error or None})},
    every file written by one run of llama.cpp's converter."""
    converter = llama_cpp_converter_dir()
    root = tmp_path_factory.mktemp("llamacpp-converter")
    made, jobs = {}, []
    for kind in KINDS:
        d = root / kind
        d.mkdir()
        outs = {t: str(root / f"{kind}-{t}.gguf") for t in ("f32", "q8_0") if t == "f32" or kind in Q8_KINDS}
        made[kind] = d, _checkpoint(d, kind), outs
        jobs += [{"model": str(d), "outtype": t, "outfile": out} for t, out in outs.items()]
    (root / "jobs.json").write_text(json.dumps(jobs))
    run = subprocess.run([sys.executable, str(DRIVER), str(converter), str(root / "jobs.json"),
                          str(root / "results.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads((root / "results.json").read_text())
    return {kind: (d, model, outs, {t: errors[out] for t, out in outs.items()})
            for kind, (d, model, outs) in made.items()}


def _file(converted, kind: str, outtype: str):
    d, model, outs, errors = converted[kind]
    assert errors[outtype] is None, f"llama.cpp's converter failed on {kind} {outtype}:\n{errors[outtype]}"
    return outs[outtype], model


@pytest.mark.parametrize("kind,outtype,min_corr", [(k, "f32", None) for k in KINDS] +
                         [(k, "q8_0", 0.999) for k in Q8_KINDS])
def test_logits_match_transformers(converted, kind, outtype, min_corr):
    path, model = _file(converted, kind, outtype)
    tokens = tokens_for(model)
    assert_logits_match(llamba_logits(path, tokens), transformers_logits(model, tokens), min_corr, f"{kind} {outtype}")


def test_files_carry_llama_cpp_names(converted):
    """The variants exercise what they claim: llama.cpp's tensor names and metadata keys, not llamba's."""
    def contents(kind):
        with GGUFFile(_file(converted, kind, "f32")[0]) as g:
            return g.metadata, g.tensors

    md, tensors = contents("llama3-rope")
    assert tensors["rope_freqs.weight"].shape == (32,) and "llama.rope.scaling.type" not in md
    md, _ = contents("gemma3-swa")
    assert md["gemma3.attention.sliding_window"] == 8 and md["gemma3.rope.freq_base_swa"] == 10000.0
    assert contents("mixtral")[1]["blk.0.ffn_gate_exps.weight"].shape == (4, 512, 256)
    md, tensors = contents("falcon")
    assert md["falcon.attention.head_count_kv"] == 1 and tensors["blk.0.attn_qkv.weight"].shape == (384, 256)
    assert contents("mptclip")[0]["mpt.attention.clamp_kqv"] == 0.5


@pytest.mark.parametrize("kind", GREEDY_KINDS)
def test_greedy_matches_transformers(converted, kind):
    path, model = _file(converted, kind, "f32")
    assert_greedy_matches(path, model, tokens_for(model)[:8])


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_matches_the_checkpoints(converted, kind):
    """The vocabulary llama.cpp's converter wrote encodes as the checkpoint's own tokenizer (the `tokenizers`
    library on tokenizer.json, or sentencepiece on tokenizer.model) and names the same BOS/EOS."""
    path, _ = _file(converted, kind, "f32")
    d = converted[kind][0]
    with GGUFFile(path) as g:
        tok = Tokenizer.from_gguf(g.metadata)
    if VARIANTS[kind][0] in SPM_KINDS:
        sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
        ref, bos, eos = sp.encode(TEXT), sp.bos_id(), sp.eos_id()
    else:
        hf = HFTokenizer.from_file(str(d / "tokenizer.json"))
        ref, bos, eos = hf.encode(TEXT, add_special_tokens=False).ids, hf.token_to_id("<|bos|>"), hf.token_to_id(EOS)
    assert tok.encode(TEXT, add_bos=False) == ref
    assert (tok.bos_id, tok.eos_id) == (bos, eos)
    assert tok.decode(ref) == TEXT


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_runs_its_own_file(converted, kind):
    """llama.cpp loads the files its converter wrote from these checkpoints and agrees with transformers: the
    harness' shims and model conventions give files llama.cpp itself accepts."""
    path, model = _file(converted, kind, "f32")
    tokens = tokens_for(model)
    ref = transformers_logits(model, tokens)
    assert_same_top1(llama_cpp_logits(path, tokens), ref, decisive=ref)
