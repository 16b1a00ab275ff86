"""Byte-level BPE and SentencePiece tokenizers of each supported model family, through the converter
(`runtime.hf_vocab`) into a GGUF file and back through `runtime.tokenizer`, against `transformers`.

Real vocabularies (llama.cpp's vocab-only GGUFs from the llama-cpp-python source package; Mistral's
`tokenizer.model` from mistral-common) become a checkpoint folder the way each family ships it: a
`tokenizer.json` with the family's real pre-tokenizer and added tokens, and a `tokenizer_config.json`
naming the family's transformers tokenizer class (which rebuilds its own pipeline: GPT-NeoX adds NFC) and
special tokens. transformers loads that folder and saves it again (as a checkpoint would hold it); the
converter reads the saved files. Where llama.cpp's test vectors exist for a vocabulary (made with the real
Hugging Face tokenizer of gpt2, mpt-7b and falcon-7b), the transformers reference is checked on them first,
so it is the family's real tokenizer and not only our reading of it.

No real vocabulary of OPT, Phi-2 or BLOOM is available offline: OPT and Phi-2 use GPT-2's byte-level BPE
with their own special tokens (OPT: four specials first and BOS `</s>` added; Phi-2: CodeGen's whitespace
tokens), which is what is built here; BLOOM's real pre-tokenizer (tokenizer.json's Split regex +
ByteLevel without regex) runs over GPT-2's vocabulary and merges, not BLOOM's own 250k vocabulary.
"""

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from transformers import AutoTokenizer
from vocab_files import mistral_tokenizer_model, read_vectors

from runtime.convert.vocab import vocab_metadata
from runtime.convert.writer import typed, write_gguf
from runtime.errors import UnsupportedError
from runtime.gguf import GGUFFile
from runtime.tokenizer import CONTROL, NORMAL, USER_DEFINED, Tokenizer

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see WE'RE done, don't we? It's 'quoted' (isn't it?)...",
    "def add(a, b):\n    return a + b  # sum\n\nclass Foo:\n\tpass\n",
    "x = 12345678901234567890; y = 3.14159e-10; 0x1F 1,000,000 $9.99 -42",
    "two  spaces   three    four\n\n\nnewlines\t\ttabs \t mixed\r\nwindows    ",
    "   leading spaces and trailing   ",
    "Café naïve résumé Ünïcödé façade — “quotes” ‘single’ … ½ ²",
    "中文字符和日本語のテキスト、한국어 텍스트。你好，世界！",
    "emoji 🦙🎉 family 👩‍👩‍👧 flags 🇫🇷 ok",
    "<b>bold</b> <|endoftext|> path/to/file.txt a|b (c) [d] {e} @f #g %h ^i &j *k ~l `m`",
    "\n", " ", "a", "",
]
TEXT = "\n".join(TEXTS) * 2

_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False)
# CodeGen (Phi-2): added, non-special tokens for runs of 31..2 spaces and 9..2 tabs
_CODEGEN_WHITESPACE = tuple(" " * n for n in range(31, 1, -1)) + tuple("\t" * n for n in range(9, 1, -1))


@dataclass(frozen=True)
class Family:
    vocab: str  # llama.cpp vocab file that gives the BPE vocabulary and merges
    tokenizer_class: str  # tokenizer_config.json: the family's transformers class
    config: dict  # tokenizer_config.json: special tokens, add_bos_token
    pre: str  # tokenizer.ggml.pre the converter must write
    pre_tokenizer: object = _BYTE_LEVEL  # tokenizer.json's pre-tokenizer (classes like GPT2Tokenizer set their own)
    normalizer: object = None  # tokenizer.json's normalizer
    front: tuple = ()  # special tokens at ids 0.. with the vocabulary's normal tokens after them (OPT, BLOOM)
    extra: tuple = ()  # added non-special tokens after the vocabulary (Phi-2)
    n_vocab: int = 0  # config.json vocab_size when the model has more rows than tokens
    gpt2_files: bool = False  # ships vocab.json + merges.txt, no tokenizer.json (OPT)
    vectors: str | None = None  # llama.cpp test vectors made with this family's real tokenizer


_EOT = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
FAMILIES = {
    "gpt2": Family("gpt-2", "GPT2Tokenizer", _EOT, "gpt-2", vectors="gpt-2"),
    "gptneox": Family("gpt-neox", "GPTNeoXTokenizer", _EOT, "gpt-2", normalizer=normalizers.NFC(), n_vocab=50432,
                      vectors="mpt"),  # mpt-7b ships gpt-neox-20b's tokenizer
    "mpt": Family("mpt", "GPTNeoXTokenizer", _EOT, "gpt-2", normalizer=normalizers.NFC(), n_vocab=50432,
                  vectors="mpt"),
    "falcon": Family("falcon", "PreTrainedTokenizerFast", {"eos_token": "<|endoftext|>"}, "falcon",
                     pre_tokenizer=pre_tokenizers.Sequence([
                         pre_tokenizers.Punctuation("contiguous"), _BYTE_LEVEL, pre_tokenizers.Digits(False),
                         pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), "isolated")]), vectors="falcon"),
    "opt": Family("gpt-2", "GPT2Tokenizer", {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>",
                                             "pad_token": "<pad>", "add_bos_token": True}, "gpt-2",
                  front=("<s>", "<pad>", "</s>", "<unk>"), n_vocab=50272, gpt2_files=True),
    "phi2": Family("gpt-2", "CodeGenTokenizer", _EOT, "gpt-2", extra=_CODEGEN_WHITESPACE, n_vocab=51200),
    "bloom": Family("gpt-2", "BloomTokenizerFast", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                    "pad_token": "<pad>"}, "bloom",
                    pre_tokenizer=pre_tokenizers.Sequence([  # as bigscience/bloom's tokenizer.json has it
                        pre_tokenizers.Split(Regex(" ?[^(\\s|[.,!?…。，、।۔،])]+"), "isolated"),
                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                    front=("<unk>", "<s>", "</s>", "<pad>")),
}


def _source_tokens(vocab_dir, family: Family):
    """(tokens, token types, merges) of the family's vocabulary, laid out as the family's tokenizer has them."""
    with GGUFFile(vocab_dir / f"ggml-vocab-{family.vocab}.gguf") as f:
        md = f.metadata
        tokens, types = list(md["tokenizer.ggml.tokens"]), np.asarray(md["tokenizer.ggml.token_type"])
        merges = list(md["tokenizer.ggml.merges"])
    keep = [i for i, t in enumerate(tokens) if not t.startswith("[PAD")]  # llama.cpp's padding up to the model rows
    tokens, types = [tokens[i] for i in keep], types[keep]
    if family.front:  # the specials first, then the normal tokens (the source's own specials dropped)
        normal = [t for t, k in zip(tokens, types, strict=True) if k == NORMAL]
        tokens = [*family.front, *normal]
        types = np.array([CONTROL] * len(family.front) + [NORMAL] * len(normal))
    tokens += family.extra
    types = np.concatenate([types, np.full(len(family.extra), USER_DEFINED)])
    return tokens, types, merges


def _checkpoint_tokenizer(d, vocab_dir, family: Family):
    """Write the family's tokenizer files into d; return transformers' tokenizer loaded from them."""
    tokens, types, merges = _source_tokens(vocab_dir, family)
    tcfg = json.dumps({"tokenizer_class": family.tokenizer_class, **family.config})
    if family.gpt2_files:  # the checkpoint as published: GPT2Tokenizer's own files
        (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        (d / "tokenizer_config.json").write_text(tcfg)
    else:  # a tokenizer.json as the family's hub files have it, saved again by transformers
        tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                     merges=[tuple(m.split(" ")) for m in merges]))
        if family.normalizer is not None:
            tok.normalizer = family.normalizer
        tok.pre_tokenizer = family.pre_tokenizer
        tok.decoder = decoders.ByteLevel()
        tok.add_tokens([AddedToken(t, special=k == CONTROL, normalized=k != CONTROL)
                        for t, k in zip(tokens, types, strict=True) if k != NORMAL])
        assert all(tok.token_to_id(t) == i for i, t in enumerate(tokens)), "added tokens out of place"
        src = d / "src"
        src.mkdir()
        tok.save(str(src / "tokenizer.json"))
        (src / "tokenizer_config.json").write_text(tcfg)
        AutoTokenizer.from_pretrained(src).save_pretrained(d)
        shutil.rmtree(src)
    (d / "config.json").write_text(json.dumps({"vocab_size": family.n_vocab or len(tokens)}))
    return AutoTokenizer.from_pretrained(d)


@dataclass
class Converted:
    ref: object  # transformers' tokenizer of the checkpoint folder
    metadata: dict  # the converter's tokenizer.* keys
    gguf: object  # path of a vocab-only GGUF file holding them
    ours: Tokenizer  # read back from that file


def _vocab_gguf(d, md: dict) -> Tokenizer:
    """Write the converter's tokenizer keys into a vocab-only GGUF file d/vocab.gguf; our tokenizer read from it."""
    write_gguf(d / "vocab.gguf", "gpt2", [typed(k, v) for k, v in md.items()], [], progress=False)
    with GGUFFile(d / "vocab.gguf") as f:
        return Tokenizer.from_gguf(f.metadata)


@pytest.fixture(scope="module")
def converted(vocab_dir, tmp_path_factory):
    """converted(family) -> Converted, each built once."""
    made = {}

    def get(name: str) -> Converted:
        if name not in made:
            d = tmp_path_factory.mktemp(name)
            ref = _checkpoint_tokenizer(d, vocab_dir, FAMILIES[name])
            md = vocab_metadata(d, json.loads((d / "config.json").read_text()))
            made[name] = Converted(ref, md, d / "vocab.gguf", _vocab_gguf(d, md))
        return made[name]
    return get


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.vectors])
def test_reference_is_the_real_tokenizer(converted, vocab_dir, name):
    """llama.cpp's test vectors were made with the family's real transformers tokenizer: the reference agrees."""
    ref = converted(name).ref
    vectors = read_vectors(vocab_dir, FAMILIES[name].vectors)
    for text, ids in vectors:
        assert ref.encode(text, add_special_tokens=False) == ids, text
    print(f"{name}: {len(vectors)} texts, {sum(len(i) for _, i in vectors)} tokens")


@pytest.mark.parametrize("name", FAMILIES)
def test_converted_tokenizer_matches_transformers(converted, name):
    c, family = converted(name), FAMILIES[name]
    assert c.metadata["tokenizer.ggml.pre"] == family.pre
    assert c.ours.n_vocab == (family.n_vocab or len(c.ref))
    n = 0
    for text in [*TEXTS, TEXT]:
        ids = c.ours.encode(text)
        assert ids == c.ref(text)["input_ids"], text
        plain = c.ours.encode(text, add_bos=False)
        assert c.ours.decode(plain) == c.ref.decode(plain) == text
        n += len(ids)
    assert c.ours.bos_id == c.ref.bos_token_id and c.ours.eos_id == c.ref.eos_token_id
    assert c.ours.is_special(c.ours.eos_id) and c.ours.eos_id in c.ours.eog_ids
    assert c.ours.add_bos == (c.ref("a")["input_ids"][0] == c.ref.bos_token_id)
    print(f"{name}: {len(TEXTS) + 1} texts, {n} tokens")


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """Mistral 7B's tokenizer.model (Llama and Mixtral ship the same format) in a checkpoint folder, converted:
    (our tokenizer, the sentencepiece library on the same file, vocab-only GGUF path)."""
    d = tmp_path_factory.mktemp("mistral")
    shutil.copy(mistral_tokenizer_model(), d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False}))
    ours = _vocab_gguf(d, vocab_metadata(d, {"vocab_size": 32000}))
    return ours, spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")), d / "vocab.gguf"


def test_converted_sentencepiece_matches_sentencepiece(mistral):
    """The SentencePiece library defines these ids. (transformers 5's LlamaTokenizer, which turns tokenizer.model
    into its own BPE, differs on runs of spaces: "Hello  world" is ▁▁ world there, ▁ ▁world in sentencepiece and
    llama.cpp.)"""
    ours, sp, _ = mistral
    assert (ours.n_vocab, ours.bos_id, ours.eos_id, ours.add_bos, ours.add_space_prefix) == (32000, 1, 2, True, True)
    n = 0
    for text in [*TEXTS, TEXT]:
        ids = ours.encode(text, special=False)
        assert ids == [sp.bos_id(), *sp.encode(text)], text
        assert ours.decode(ids[1:]) == sp.decode(ids[1:]) == text
        n += len(ids)
    print(f"mistral: {len(TEXTS) + 1} texts, {n} tokens")


@pytest.mark.parametrize("name", [*FAMILIES, "mistral"])
def test_converted_tokenizer_matches_llama_cpp(converted, mistral, name):
    """llama.cpp reads the converted vocabulary (its tokenizer.ggml.pre included) and gives the same ids."""
    pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')
    from runtime.eval.llamacpp import open_llama

    ours, path = (mistral[0], mistral[2]) if name == "mistral" else (converted(name).ours, converted(name).gguf)
    llama = open_llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in [*TEXTS, TEXT]:
        assert llama.tokenize(text.encode(), add_bos=True, special=True) == ours.encode(text), text


@pytest.mark.parametrize("pre_tokenizer", [
    pre_tokenizers.ByteLevel(add_prefix_space=True),  # llama.cpp adds no space: the ids would differ
    pre_tokenizers.Whitespace(),
    pre_tokenizers.Sequence([FAMILIES["bloom"].pre_tokenizer[0], _BYTE_LEVEL]),  # BLOOM's split, then GPT-2's
])
def test_unknown_pre_tokenizer_is_refused(tmp_path, pre_tokenizer):
    tok = HFTokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizer
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UnsupportedError, match="BPE pre-tokenizer not recognized"):
        vocab_metadata(tmp_path, {})
