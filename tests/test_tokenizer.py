"""Tokenizers built from GGUF metadata, checked against three oracles:
- transformers' GGUF tokenizer (the code behind `AutoTokenizer.from_pretrained(dir, gguf_file=...)`) on the
  same real GGUF files;
- the `sentencepiece` library running Mistral's original `tokenizer.model` (from the `mistral-common` wheel);
- llama.cpp's own test vectors (`ggml-vocab-*.gguf` with `.inp` texts and `.out` ids, from the
  llama-cpp-python source package), one vocabulary per pre-tokenizer family we support.
"""

import time

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers
from vocab_files import mistral_tokenizer_model, read_vectors

from runtime.errors import TokenizerError
from runtime.gguf import GGUFFile
from runtime.tokenizer import PRE_TOKENIZERS, StreamDecoder, Tokenizer

REAL_MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]

SAMPLES = [
    "Hello world!",
    " leading space",
    "   three leading spaces and trailing   ",
    "two  spaces   three    four\n\n\nthree newlines\t\ttabs \t mixed\r\nwindows",
    "x = 12345678901234567890; y = 3.14159e-10; 0x1F 1,000,000",
    "digits after whitespace:\n\n12\t\t34   56 \r\n7",
    "def add(a, b):\n    return a + b  # sum\n\nclass Foo:\n\tpass\n",
    "Café naïve résumé Ünïcödé façade — “quotes” ‘single’ …",
    "中文字符和日本語のテキスト、한국어 텍스트",
    "emoji 🦙🎉 family 👩‍👩‍👧 flags 🇫🇷 ok",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n<bos><eos>",
    "I'm sure you'll see WE'RE done, don't we? It's 'quoted'.",
    "<table><tr><td>cell</td></tr></table> <s>strike</s>",
    "\n",
    "",
    "a",
]
TEXT = "\n".join(SAMPLES) * 3


# ---------------------------------------------------------------- real models vs transformers


class _Models(dict):
    def __repr__(self):  # keep hypothesis' falsifying-example reports short
        return f"<tokenizers of {', '.join(self)}>"


@pytest.fixture(scope="module")
def real(model_path):
    """name -> (our Tokenizer, transformers' backend tokenizer, transformers' tokenizer config)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    out = _Models()
    for name in REAL_MODELS:
        path = model_path(name)
        with GGUFFile(path) as f:
            ours = Tokenizer.from_gguf(f.metadata)
        architecture, tokenizer_dict, config = get_gguf_tokenizer(str(path))
        hf = convert_gguf_tokenizer(architecture, tokenizer_dict)[0]
        if tokenizer_dict["pre_tokenizer_type"] == "smollm":
            # transformers has no split rule for "smollm" and falls back to GPT-2's; SmolLM2's own
            # tokenizer.json splits digits first: put that back ("\n\n1" is [ĊĊ, 1] there, not [Ċ, Ċ, 1])
            hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
        out[name] = ours, hf, config
    return out


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_ids_match_transformers(real, name):
    ours, hf, config = real[name]
    assert ours.add_bos == config["add_bos_token"]
    for text in [*SAMPLES, TEXT]:
        ids = ours.encode(text, add_bos=False)
        assert ids == hf.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == text
        assert ours.encode(text) == [ours.bos_id] * ours.add_bos + ids
    hf.encode_special_tokens = True  # control tokens written in the text are plain text
    try:
        for text in SAMPLES[9:11]:
            assert ours.encode(text, add_bos=False, special=False) == hf.encode(text, add_special_tokens=False).ids
    finally:
        hf.encode_special_tokens = False


# any text but surrogates (not encodable) and U+2581 (SentencePiece's escaped space, decodes to " ")
_ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=30)
_SPECIAL_BITS = st.sampled_from(["<|im_start|>", "<end_of_turn>", "\n\n", "  ", "\t", "<table>", "'s", "12345"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_ANY_TEXT, _SPECIAL_BITS), max_size=6).map("".join))
def test_real_model_random_text_matches_transformers(real, text):
    for name, (ours, hf, _) in real.items():
        ids = ours.encode(text, add_bos=False)
        assert ids == hf.encode(text, add_special_tokens=False).ids
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)
        if name != "smollm2-135m-instruct":  # SmolLM2's vocabulary lacks 21 bytes (0x04, 0xC0, 0xF1, ...)
            assert ours.decode(ids) == text


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_special_tokens(real, name):
    ours, hf, _ = real[name]
    assert ours.n_vocab == hf.get_vocab_size()
    texts = {"smollm2-135m-instruct": ["<|im_end|>", "<|endoftext|>"],
             "qwen2.5-coder-0.5b-instruct": ["<|im_end|>", "<|endoftext|>"],
             "gemma-3-270m": ["<end_of_turn>", "<eos>"]}[name]
    expected = {hf.token_to_id(t) for t in texts}
    assert ours.eos_id in expected and expected <= ours.eog_ids
    assert not ({hf.token_to_id(t) for t in ["<|im_start|>", "<start_of_turn>", "<bos>"]} & ours.eog_ids)
    ids = ours.encode(f"{texts[0]}hi")
    assert ours.is_special(ids[ours.add_bos]) and not ours.is_special(ids[-1])
    assert ours.decode(ids, skip_special=True) == "hi"
    assert ours.token_bytes(ids[ours.add_bos]) == texts[0].encode()
    if name == "gemma-3-270m":  # this file carries no chat template
        assert ours.chat_template is None
    else:
        assert "{%" in ours.chat_template


@pytest.mark.parametrize("name", REAL_MODELS)
def test_invalid_unicode_is_a_tokenizer_error(real, name):
    """Lone surrogates (undecodable argv bytes, "\\ud800") raised TypeError inside the tokenizer libraries."""
    ours = real[name][0]
    for text in ["\ud800", "hi \udcff\udcfe"]:
        with pytest.raises(TokenizerError, match="not valid Unicode"):
            ours.encode(text)


@pytest.mark.parametrize("name", REAL_MODELS)
def test_stream_decoder_never_breaks_characters(real, name):
    ours = real[name][0]
    text = "emoji 🦙🎉👩‍👩‍👧 中文字符 日本語 한국어 ẞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 4
    ids = ours.encode(text, add_bos=False)
    split = [i for i in ids if not _is_utf8(ours.token_bytes(i))]
    assert split, "no token splits a character: the test would prove nothing"
    stream = StreamDecoder(ours)
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == ours.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some token ended mid-character and was held back


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_build_and_encode_speed(real, model_path):
    """Report build and encode times (CPU seconds: the machine may be shared); generous bounds."""
    for name in REAL_MODELS:
        with GGUFFile(model_path(name)) as f:
            t0 = time.process_time()
            tok = Tokenizer.from_gguf(f.metadata)
            build = time.process_time() - t0
        prompt = TEXT * 3  # about 2000 tokens
        t0 = time.process_time()
        n = len(tok.encode(prompt))
        encode = time.process_time() - t0
        print(f"{name}: build {build:.3f} s, encode {n} tokens {encode * 1000:.1f} ms")
        assert 1500 < n < 3000
        assert encode < 0.1
        if name == "smollm2-135m-instruct":
            assert build < 1.0


# ---------------------------------------------------------------- SentencePiece vs Mistral's tokenizer.model


@pytest.fixture(scope="module")
def mistral_model():
    return spm.SentencePieceProcessor(model_file=str(mistral_tokenizer_model()))


def _spm_metadata(sp) -> dict:
    """GGUF tokenizer metadata as llama.cpp's converter writes it for a SentencePiece model."""
    n = sp.get_piece_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i)
             else 1 for i in range(n)]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": np.array([sp.get_score(i) for i in range(n)], np.float32),
            "tokenizer.ggml.token_type": np.array(types, np.int32), "tokenizer.ggml.bos_token_id": sp.bos_id(),
            "tokenizer.ggml.eos_token_id": sp.eos_id(), "tokenizer.ggml.unknown_token_id": sp.unk_id()}


def test_sentencepiece_matches_mistral_tokenizer_model(mistral_model):
    sp = mistral_model
    ours = Tokenizer.from_gguf(_spm_metadata(sp))
    assert (ours.n_vocab, ours.bos_id, ours.eos_id, ours.add_bos, ours.eog_ids) == (32000, 1, 2, True, {2})
    for text in [*SAMPLES, TEXT]:
        ids = sp.encode(text)
        assert ours.encode(text, special=False) == [sp.bos_id(), *ids], text
        assert ours.decode(ids) == sp.decode(ids) == text
    # control tokens written in the text map to their ids; each text fragment gets its own space prefix
    assert ours.encode("<s>Hi</s> you", add_bos=False) == [1, *sp.encode("Hi"), 2, *sp.encode(" you")]
    assert ours.decode(ours.encode("Hi</s> you")) == "<s>Hi</s> you"


def test_sentencepiece_byte_fallback_and_space_prefix(mistral_model):
    meta = _spm_metadata(mistral_model)
    ours = Tokenizer.from_gguf(meta)
    text = "\U0001f999\U0001f9a9"  # not in the vocabulary: byte tokens <0x..>
    ids = ours.encode(text, add_bos=False)
    assert ids == mistral_model.encode(text)
    assert b"".join(ours.token_bytes(i) for i in ids) == b" " + text.encode()
    assert len(ids) == 9 and ours.decode(ids) == text
    no_prefix = Tokenizer.from_gguf({**meta, "tokenizer.ggml.add_space_prefix": False})
    for text in filter(None, SAMPLES):  # sentencepiece adds no prefix to an empty text
        assert no_prefix.encode(" " + text, add_bos=False, special=False) == mistral_model.encode(text)
    assert no_prefix.decode(no_prefix.encode(" Hello world")) == "<s> Hello world"


# ---------------------------------------------------------------- llama.cpp test vectors

VOCABS = {  # vocabulary file -> the pre-tokenizer family it checks
    "llama-spm": None, "phi-3": None, "llama-bpe": "llama-bpe", "qwen2": "qwen2", "gpt-2": "gpt-2", "mpt": "mpt",
    "falcon": "falcon", "starcoder": "starcoder", "refact": "refact", "command-r": "command-r",
    "deepseek-coder": "deepseek-coder",
}


def test_every_claimed_pre_tokenizer_family_is_checked():
    checked = {tuple(PRE_TOKENIZERS[pre][0]) for pre in filter(None, VOCABS.values())} | {
        tuple(PRE_TOKENIZERS["smollm"][0]),  # smollm: the real model above
        tuple(PRE_TOKENIZERS["bloom"][0])}  # bloom: BLOOM's tokenizer.json pre-tokenizer, test_tokenizer_families.py
    unchecked = {pre for pre, (regexes, *_) in PRE_TOKENIZERS.items() if tuple(regexes) not in checked}
    assert unchecked == {"default"}  # llama.cpp's fallback for files without tokenizer.ggml.pre: no test vectors


@pytest.mark.parametrize("vocab", VOCABS)
def test_llama_cpp_vocab_test_vectors(vocab_dir, vocab):
    with GGUFFile(vocab_dir / f"ggml-vocab-{vocab}.gguf") as f:
        tok = Tokenizer.from_gguf(f.metadata)
    assert tok.pre == VOCABS[vocab]
    for text, expected in read_vectors(vocab_dir, vocab):
        ids = tok.encode(text, add_bos=False, special=False)
        assert ids == expected, text
        assert tok.decode(ids) == text


# ---------------------------------------------------------------- bad input


def _tiny_bpe(**overrides) -> dict:
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": ["a", "b", "ab", "<|end|>"], "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.token_type": np.array([1, 1, 1, 3], np.int32), "tokenizer.ggml.eos_token_id": 3}
    return {k: v for k, v in {**meta, **overrides}.items() if v is not None}


def test_tiny_bpe_works():
    tok = Tokenizer.from_gguf(_tiny_bpe())
    assert tok.encode("abab<|end|>a") == [2, 2, 3, 0]
    assert tok.eog_ids == {3} and tok.bos_id is None and not tok.add_bos


@pytest.mark.parametrize("overrides, message", [
    ({"tokenizer.ggml.model": "bert"}, "'bert'; supported: llama, gpt2"),
    ({"tokenizer.ggml.model": None}, "no 'tokenizer.ggml.model'"),
    ({"tokenizer.ggml.pre": "chameleon"}, "'chameleon'; supported: default, gpt2"),
    ({"tokenizer.ggml.tokens": []}, "non-empty list of strings"),
    ({"tokenizer.ggml.token_type": np.array([1, 1], np.int32)}, "4 entries"),
    ({"tokenizer.ggml.merges": ["a b c"]}, "tokenizer.ggml.merges"),
    ({"tokenizer.ggml.merges": ["a zz"]}, "tokenizer.ggml.merges"),
    ({"tokenizer.ggml.merges": None}, "no 'tokenizer.ggml.merges'"),
    ({"tokenizer.ggml.eos_token_id": 4}, "outside the vocabulary"),
    ({"tokenizer.ggml.add_bos_token": True}, "no tokenizer.ggml.bos_token_id"),
    ({"tokenizer.ggml.model": "llama"}, "no 'tokenizer.ggml.scores'"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": np.zeros(4, np.float32),
      "tokenizer.ggml.token_type": np.array([1, 6, 1, 3], np.int32)}, "expected the form <0xAB>"),
])
def test_bad_metadata_raises(overrides, message):
    with pytest.raises(TokenizerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Tokenizer.from_gguf(_tiny_bpe(**overrides))


def test_bad_calls_raise():
    tok = Tokenizer.from_gguf(_tiny_bpe())
    for bad in (4, -1, 2.0, "a"):
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            tok.decode([0, bad])
        with pytest.raises(TokenizerError):
            tok.token_bytes(bad)
    with pytest.raises(TokenizerError, match="needs a str"):
        tok.encode(b"ab")
    with pytest.raises(TokenizerError, match="no BOS"):
        tok.encode("ab", add_bos=True)
