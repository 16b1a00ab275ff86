"""Tokenizers built from GGUF metadata, with llama.cpp's semantics, and a streaming detokenizer.

`tokenizer.ggml.model == "llama"`: SentencePiece BPE. The GGUF tokens, scores and types become a
ModelProto (written in protobuf wire format below, so no protobuf package is needed) that the
`sentencepiece` library runs: spaces escaped as U+2581, a dummy space prefix when
`tokenizer.ggml.add_space_prefix` (default true), byte fallback, no other normalization.
`"gpt2"`: byte-level BPE run by a Hugging Face `tokenizers` model built from the vocab and merges, after
the pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`.

As in llama.cpp, the text is first split on special tokens: control and unknown tokens when
`special=True`, user-defined tokens always; each remaining fragment is tokenized on its own (so with a
space prefix, every fragment gets one). Decoding renders control tokens as their text unless
`skip_special`, and drops the space prefix the encoder added (at the start and after special tokens).
"""

import codecs
import re
from dataclasses import dataclass
from functools import partial

import numpy as np
import sentencepiece as spm
from tokenizers import Regex, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import TokenizerError
from .gguf import meta

# GGUF token types (llama.cpp `llama_token_type`); SentencePiece uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPECIAL_TYPES = (CONTROL, UNKNOWN)
# User-defined tokens are text (CodeGen's runs of spaces, added words), except tag-shaped ones, which are markup
# of the model's formats that some files type as user-defined (Gemma 3's <start_of_image>, <unused12>): decoding
# with skip_special drops those too, as it drops control tokens.
_TAG = re.compile(rb"<[^<>\s]+>")

# Pre-tokenizer regexes from llama.cpp (src/llama-vocab.cpp), applied in order, each splitting the
# pieces of the one before (matches and the text between them both become pieces).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"  # BLOOM's Split regex with its nested character class flattened
_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]
_PRE_FAMILIES = [
    # (names of tokenizer.ggml.pre, regexes, llama.cpp's ignore_merges, llama.cpp's default add_bos)
    (("default",), _DEFAULT, False, False),
    (("gpt2", "gpt-2", "phi-2", "mpt", "olmo"), [_GPT2], False, False),
    (("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"), [_LLAMA3], True, True),
    (("dbrx", "smaug-bpe"), [_LLAMA3], False, False),
    (("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), [_QWEN2], False, False),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
     [r"\p{N}", _GPT2], False, False),
    (("falcon",), [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"], False, False),
    (("bloom",), [_BLOOM], False, False),
    (("deepseek-coder",), [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"], False, False),
]
PRE_TOKENIZERS = {name: (regexes, ignore, bos) for names, regexes, ignore, bos in _PRE_FAMILIES for name in names}
MODELS = ("llama", "gpt2")

# End-of-generation tokens recognised by their text when they are control tokens (after llama.cpp).
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
    "<|end_of_text|>", "<end_of_utterance>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
])


def _byte_decoder() -> dict:
    """GPT-2's byte-level alphabet inverted, as a str.translate table: {code point: byte it stands for}."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(others))]
    return dict(zip(chars, printable + others, strict=True))


_BYTE_DECODER = _byte_decoder()
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class _Vocab:
    tokens: list  # list[str], the GGUF token texts
    types: np.ndarray  # (n_vocab,) int32 GGUF token types


# ---------------------------------------------------------------- metadata access


_key = partial(meta, error=TokenizerError)  # _key(metadata, key, kind[, default]): required without a default


def _string_list(metadata: dict, key: str) -> list:
    value = _key(metadata, key, list)
    if not value or not all(isinstance(s, str) for s in value):
        raise TokenizerError(f"GGUF metadata {key!r} must be a non-empty list of strings")
    return value


def _numeric_array(metadata: dict, key: str, n: int, default=None) -> np.ndarray:
    if key not in metadata and default is not None:
        return np.full(n, default)
    value = _key(metadata, key, np.ndarray)
    if value.ndim != 1 or len(value) != n or value.dtype.kind not in "iuf":
        raise TokenizerError(f"GGUF metadata {key!r} must be a numeric array of {n} entries (one per token), "
                             f"got {value.dtype} {value.shape}")
    return value


def _token_id(metadata: dict, key: str, n: int, default=None):
    tid = _key(metadata, key, int, default)
    if tid is not None and not 0 <= tid < n:
        raise TokenizerError(f"GGUF metadata {key!r} = {tid} is outside the vocabulary (0..{n - 1})")
    return tid


# ---------------------------------------------------------------- SentencePiece backend


def _put_varints(out: np.ndarray, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Write protobuf varints of `values` (each < 2**14) at offsets `at`; return the offsets after them."""
    if values.size and values.max() >= 1 << 14:
        raise TokenizerError("a token is too long (16 KiB or more)")
    two = values >= 0x80
    out[at] = values & 0x7F | two * 0x80
    out[at[two] + 1] = values[two] >> 7
    return at + 1 + two


def _model_proto(pieces: list, scores: np.ndarray, types: np.ndarray, add_dummy_prefix: bool) -> bytes:
    """Serialized sentencepiece ModelProto (sentencepiece_model.proto), written with numpy for speed:
    pieces=1 {piece=1 string, score=2 float, type=3 enum}, trainer_spec=2 {model_type=3 (BPE=2),
    byte_fallback=35}, normalizer_spec=3 {name=1, add_dummy_prefix=3, remove_extra_whitespaces=4,
    escape_whitespaces=5}."""
    encoded = [p.encode() for p in pieces]
    blob = np.frombuffer(b"".join(encoded), np.uint8)
    length = np.fromiter(map(len, encoded), np.int64, len(encoded))  # (n,)
    inner = 1 + 1 + (length >= 0x80) + length + 5 + 2  # piece tag+varint+text, score tag+4, type tag+1
    start = np.concatenate([[0], np.cumsum(2 + (inner >= 0x80) + inner)])  # (n + 1,) offset of each piece
    out = np.zeros(start[-1], np.uint8)
    out[start[:-1]] = 0x0A  # ModelProto.pieces, length-delimited
    tag = _put_varints(out, start[:-1] + 1, inner)  # (n,) SentencePiece.piece tag
    out[tag] = 0x0A
    text = _put_varints(out, tag + 1, length)  # (n,) where each piece's text starts
    out[np.repeat(text - np.concatenate([[0], np.cumsum(length)[:-1]]), length) + np.arange(blob.size)] = blob
    tail = text + length  # (n,) score tag, 4 score bytes, type tag, type
    out[tail] = 0x15
    out[tail[:, None] + np.arange(1, 5)] = scores.astype("<f4").view(np.uint8).reshape(-1, 4)
    out[tail + 5], out[tail + 6] = 0x18, types
    byte_fallback = b"\x98\x02\x01" if (types == BYTE).any() else b""  # field 35 = 1
    trainer = b"\x12" + bytes([2 + len(byte_fallback)]) + b"\x18\x02" + byte_fallback
    normalizer = b"\x1a\x10\x0a\x08identity" + bytes([0x18, int(add_dummy_prefix), 0x20, 0, 0x28, 1])
    return out.tobytes() + trainer + normalizer


class _SentencePieceBackend:
    def __init__(self, vocab: _Vocab, scores: np.ndarray, unk_id: int, add_space_prefix: bool):
        types = vocab.types.copy()
        types[types == UNKNOWN] = CONTROL  # sentencepiece wants exactly one unknown piece
        types[unk_id] = UNKNOWN
        for i in np.flatnonzero(types == BYTE):
            if not _BYTE_TOKEN.fullmatch(vocab.tokens[i]):
                raise TokenizerError(f"byte token {i} is {vocab.tokens[i]!r}, expected the form <0xAB>")
        pieces, seen = list(vocab.tokens), set()
        for i, piece in enumerate(pieces):  # sentencepiece rejects empty and duplicate pieces: rename them
            if not piece or piece in seen:
                pieces[i], types[i] = f"[UNUSED_{i}]", UNUSED
            seen.add(pieces[i])
        types[(types < NORMAL) | (types > BYTE)] = UNUSED
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(_model_proto(pieces, scores, types, add_space_prefix))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"sentencepiece rejected the vocabulary: {e}") from None

    def encode(self, texts: list) -> list:
        return self._sp.encode(texts)

    @staticmethod
    def text_bytes(token: str) -> bytes:
        return token.replace("\u2581", " ").encode()


# ---------------------------------------------------------------- byte-level BPE backend


class _ByteLevelBPEBackend:
    def __init__(self, vocab: _Vocab, merges: list, pre: str):
        regexes, ignore_merges, _ = PRE_TOKENIZERS[pre]
        pairs = [tuple(merge.split(" ")) for merge in merges]
        token_to_id = {text: i for i, text in enumerate(vocab.tokens)}
        try:
            model = models.BPE(vocab=token_to_id, merges=pairs, ignore_merges=ignore_merges)
        except Exception as e:  # tokenizers raises TypeError or plain Exception for bad merges
            raise TokenizerError(f"bad tokenizer.ggml.merges (each must be two tokens of the vocabulary "
                                 f"separated by a space): {str(e).splitlines()[-1]}") from None
        self._hf = HFTokenizer(model)
        self._hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    def encode(self, texts: list) -> list:
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    @staticmethod
    def text_bytes(token: str) -> bytes:
        try:
            return token.translate(_BYTE_DECODER).encode("latin-1")
        except UnicodeEncodeError:  # not byte-level text: keep it as it is
            return token.encode()


# ---------------------------------------------------------------- the tokenizer


def _trie_regex(texts) -> re.Pattern | None:
    """A regex capturing the longest of `texts` that starts at the leftmost position, or None if no texts.
    Written as a trie (shared prefixes factored out) so thousands of tokens compile and match fast."""
    trie = {}
    for text in texts:
        node = trie
        for ch in text:
            node = node.setdefault(ch, {})
        node[""] = None  # a token ends here

    def pattern(node) -> str:
        alternatives = [re.escape(ch) + pattern(child) for ch, child in node.items() if ch]
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        return f"(?:{body})?" if "" in node else body  # greedy: the longer token first

    return re.compile("(" + pattern(trie) + ")") if trie else None


class Tokenizer:
    """Text <-> token ids for a GGUF model. Build with `Tokenizer.from_gguf(metadata)`."""

    def __init__(self, vocab: _Vocab, backend, *, bos_id, eos_id, eog_ids, add_bos: bool, add_space_prefix: bool,
                 chat_template, model: str, pre):
        self._vocab, self._backend = vocab, backend
        self.bos_id, self.eos_id, self.eog_ids = bos_id, eos_id, frozenset(eog_ids)
        self.add_bos, self.add_space_prefix = add_bos, add_space_prefix
        self.chat_template, self.model, self.pre = chat_template, model, pre
        self.n_vocab = len(vocab.tokens)
        self._bytes = [None] * self.n_vocab  # token_bytes, filled on first use
        types = vocab.types
        split_ids = [i for i in np.flatnonzero(np.isin(types, (*_SPECIAL_TYPES, USER_DEFINED))).tolist()
                     if vocab.tokens[i]]  # split the text on these first (an empty one never matches)
        self._split_ids = {vocab.tokens[i]: i for i in split_ids}
        self._split_all = _trie_regex(self._split_ids)
        self._split_user = _trie_regex(vocab.tokens[i] for i in split_ids if types[i] == USER_DEFINED)

    @classmethod
    def from_gguf(cls, metadata: dict) -> "Tokenizer":
        model = _key(metadata, "tokenizer.ggml.model", str)
        if model not in MODELS:
            raise TokenizerError(f"unsupported tokenizer.ggml.model {model!r}; supported: {', '.join(MODELS)}")
        tokens = _string_list(metadata, "tokenizer.ggml.tokens")
        n = len(tokens)
        types = _numeric_array(metadata, "tokenizer.ggml.token_type", n, default=NORMAL).astype(np.int32)
        vocab = _Vocab(tokens, types)
        spm_model = model == "llama"
        pre = None if spm_model else _key(metadata, "tokenizer.ggml.pre", str, "default")
        if pre is not None and pre not in PRE_TOKENIZERS:
            raise TokenizerError(f"unsupported tokenizer.ggml.pre {pre!r}; supported: {', '.join(PRE_TOKENIZERS)}")
        add_space_prefix = spm_model and _key(metadata, "tokenizer.ggml.add_space_prefix", bool, True)
        if spm_model:
            scores = _numeric_array(metadata, "tokenizer.ggml.scores", n)
            unk_id = _token_id(metadata, "tokenizer.ggml.unknown_token_id", n, 0)
            backend = _SentencePieceBackend(vocab, scores, unk_id, add_space_prefix)
        else:
            backend = _ByteLevelBPEBackend(vocab, _string_list(metadata, "tokenizer.ggml.merges"), pre)
        bos_id = _token_id(metadata, "tokenizer.ggml.bos_token_id", n, 1 if spm_model else None)
        eos_id = _token_id(metadata, "tokenizer.ggml.eos_token_id", n, 2 if spm_model else None)
        add_bos = _key(metadata, "tokenizer.ggml.add_bos_token", bool, spm_model or PRE_TOKENIZERS[pre][2])
        if add_bos and bos_id is None:
            raise TokenizerError("the tokenizer adds a BOS token but GGUF metadata has no tokenizer.ggml.bos_token_id")
        for role in ("unknown", "padding", "seperator", "cls", "mask"):  # unused here, but must name a token
            _token_id(metadata, f"tokenizer.ggml.{role}_token_id", n)  # (llama.cpp spells it "seperator")
        eog = {t for t in (eos_id, _token_id(metadata, "tokenizer.ggml.eot_token_id", n),
                           _token_id(metadata, "tokenizer.ggml.eom_token_id", n)) if t is not None}
        eog.update(i for i in np.flatnonzero(types == CONTROL).tolist() if tokens[i] in _EOG_TEXTS)
        return cls(vocab, backend, bos_id=bos_id, eos_id=eos_id, eog_ids=eog, add_bos=add_bos,
                   add_space_prefix=add_space_prefix,
                   chat_template=_key(metadata, "tokenizer.chat_template", str, None), model=model, pre=pre)

    # -- encoding

    def encode(self, text: str, add_bos=None, special: bool = True) -> list:
        """Token ids of `text`. add_bos None: the model's default; special: map control tokens written in
        the text to their ids (user-defined tokens are always mapped)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() needs a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: undecodable bytes of argv or a file, or "\ud800"
            raise TokenizerError(f"the text is not valid Unicode: {e.object[e.start]!r} at character {e.start} "
                                 "(invalid UTF-8 input?)") from None
        add_bos = self.add_bos if add_bos is None else add_bos
        if add_bos and self.bos_id is None:
            raise TokenizerError("add_bos=True but the model has no BOS token")
        splitter = self._split_all if special else self._split_user
        parts = splitter.split(text) if splitter else [text]  # text, special, text, special, ..., text
        fragments = [p for p in parts[::2] if p]
        encoded = iter(self._backend.encode(fragments) if fragments else [])
        ids = [self.bos_id] if add_bos else []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self._split_ids[part])
            elif part:
                ids.extend(next(encoded))
        return ids

    # -- decoding

    def _check(self, tid) -> int:
        if not isinstance(tid, (int, np.integer)) or not 0 <= tid < self.n_vocab:
            raise TokenizerError(f"token id {tid!r} is outside the vocabulary (0..{self.n_vocab - 1})")
        return int(tid)

    def token_bytes(self, tid: int) -> bytes:
        """The raw bytes token `tid` stands for (control tokens: their text); may be part of a UTF-8 character."""
        tid = self._check(tid)
        piece = self._bytes[tid]
        if piece is None:
            text, kind = self._vocab.tokens[tid], self._vocab.types[tid]
            if kind == NORMAL:
                piece = self._backend.text_bytes(text)
            elif kind == BYTE and _BYTE_TOKEN.fullmatch(text):
                piece = bytes([int(text[3:5], 16)])
            else:  # control, unknown and user-defined tokens stand for their text; unused ones for nothing
                piece = text.encode() if kind in (CONTROL, UNKNOWN, USER_DEFINED) else b""
            self._bytes[tid] = piece
        return piece

    def is_special(self, tid: int) -> bool:
        """A control or unknown token (not text: `decode(skip_special=True)` drops it)."""
        return int(self._vocab.types[self._check(tid)]) in _SPECIAL_TYPES

    def is_markup(self, tid: int) -> bool:
        """A token `decode(skip_special=True)` drops: a special token, or a tag-shaped user-defined one."""
        kind = self._vocab.types[self._check(tid)]
        return kind in _SPECIAL_TYPES or (kind == USER_DEFINED and bool(_TAG.fullmatch(self.token_bytes(tid))))

    def _piece(self, tid, skip_special: bool, strip: bool):
        """(bytes of `tid` in decoded text, whether a leading space of the next text token is a space prefix)."""
        piece = self.token_bytes(tid)
        kind = self._vocab.types[tid]
        if kind in _SPECIAL_TYPES or kind == USER_DEFINED:
            return (b"" if skip_special and self.is_markup(tid) else piece), self.add_space_prefix
        if not piece:
            return piece, strip
        return (piece[1:] if strip and piece[:1] == b" " else piece), False

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids` (invalid UTF-8 becomes U+FFFD); skip_special leaves out control tokens and tag-shaped
        user-defined ones (`<start_of_image>`), as llama.cpp's output does without `--special`."""
        out, strip = [], self.add_space_prefix
        for tid in ids:
            piece, strip = self._piece(tid, skip_special, strip)
            out.append(piece)
        return b"".join(out).decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental decode: feed ids one at a time, get only complete UTF-8 text back.
    The concatenation of all feed() results and flush() equals tokenizer.decode(ids)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tokenizer, self._skip = tokenizer, skip_special
        self._strip = tokenizer.add_space_prefix
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, tid: int) -> str:
        piece, self._strip = self._tokenizer._piece(tid, self._skip, self._strip)
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Text still held back (an incomplete UTF-8 sequence at the end becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)
