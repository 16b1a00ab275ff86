"""Hugging Face tokenizer files -> GGUF `tokenizer.*` metadata, as llama.cpp's convert_hf_to_gguf writes it.

- `tokenizer.model` (SentencePiece) -> `tokenizer.ggml.model = "llama"` with tokens, scores, token types.
- `tokenizer.json` (byte-level BPE) -> `"gpt2"` with tokens, token types, merges and `tokenizer.ggml.pre`;
  without it, GPT2Tokenizer's `vocab.json` + `merges.txt` (as OPT ships them) stand for GPT-2's tokenizer.json.
  llama.cpp picks `pre` by hashing the tokenizer's output on a check text, which only knows published
  vocabularies; we map the pre-tokenizer steps declared in tokenizer.json instead (names llama.cpp accepts,
  listed in PRE_TOKENIZERS; the normalizer is ignored, as llama.cpp does) and refuse other steps.
- `tokenizer_config.json` (+ `chat_template.jinja`): special token ids, add_bos/add_eos, chat template.
The files are untrusted input: every token id is checked to lie in the vocabulary and every value's type before it
is used, and a problem is a ConvertError naming the file and the field.
"""

import reprlib
from pathlib import Path

import numpy as np

from ..archs.hf import integer, table
from ..errors import ConvertError, UnsupportedError
from .jsonfile import read_object, read_text

# llama.cpp token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_BLOOM_RE = r" ?[^(\s|[.,!?…。，、।۔،])]+"  # as BLOOM's tokenizer.json writes it (a nested character class)
_BYTES = ("ByteLevel", False, False)  # ByteLevel(add_prefix_space=False, use_regex=False) after a Split
_BYTES_GPT2 = ("ByteLevel", False, True)  # ByteLevel(add_prefix_space=False) with GPT-2's own regex


def _split(regex: str) -> tuple:
    return ("Split", regex, "Isolated", False)


# (pre-tokenizer steps as _step() describes them, BPE ignore_merges) -> tokenizer.ggml.pre, with names llama.cpp
# accepts (its converter finds the same ones by hashing the token ids of a check text).
PRE_TOKENIZERS = {
    ((_BYTES_GPT2,), False): "gpt-2",  # GPT-2, GPT-NeoX/Pythia, MPT (NFC normalizer), OPT, Phi-2 (CodeGen)
    ((("Digits", True), _BYTES_GPT2), False): "smollm",
    ((_split(_LLAMA3_RE), _BYTES), True): "llama-bpe",
    ((_split(_LLAMA3_RE), _BYTES), False): "smaug-bpe",
    ((_split(_QWEN2_RE), _BYTES), False): "qwen2",
    ((("Punctuation", "Contiguous"), _BYTES_GPT2, ("Digits", False), _split("[0-9][0-9][0-9]")), False): "falcon",
    ((_split(_BLOOM_RE), _BYTES), False): "bloom",
}


def _objects(v, where: str) -> list:
    """v checked to be a list of JSON objects."""
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ConvertError(f"{where} must be a list of objects, got {reprlib.repr(v)}")
    return v


def _token_id(i, bound: int, where: str) -> int:
    """i checked to be a token id in 0..bound-1 (not a bool, a string or a float)."""
    if not isinstance(i, int) or isinstance(i, bool):
        raise ConvertError(f"{where} must be an integer token id, got {reprlib.repr(i)}")
    if not 0 <= i < bound:
        raise ConvertError(f"{where}: token id {i} is outside the vocabulary (0..{bound - 1})")
    return i


def _step(s: dict, where: str) -> tuple:
    """One tokenizer.json pre-tokenizer step as a comparable tuple (its type and the options that change ids)."""
    kind = s.get("type")
    if kind == "Split":
        pattern = table(s, "pattern", where)
        return kind, pattern.get("Regex", pattern.get("String")), s.get("behavior"), bool(s.get("invert"))
    if kind == "ByteLevel":
        return kind, bool(s.get("add_prefix_space")), bool(s.get("use_regex", True))
    if kind == "Digits":
        return kind, bool(s.get("individual_digits"))
    if kind == "Punctuation":
        return kind, s.get("behavior", "Isolated")
    return (kind,)


def _pre_tokenizer_name(tok: dict, path: Path) -> str:
    where = f"{path} 'pre_tokenizer'"
    pt = table(tok, "pre_tokenizer", str(path))
    steps = _objects(pt.get("pretokenizers") or [], where) if pt.get("type") == "Sequence" else [pt]
    key = (tuple(_step(s, where) for s in steps), bool(table(tok, "model", str(path)).get("ignore_merges")))
    # compared, not hashed: a step's values come from the file and may be lists
    name = next((name for known, name in PRE_TOKENIZERS.items() if known == key), None)
    if name is None:
        raise UnsupportedError(f"{path}: BPE pre-tokenizer not recognized (steps {reprlib.repr(list(key[0]))}, "
                               f"ignore_merges {key[1]}); known: {', '.join(PRE_TOKENIZERS.values())}")
    return name


def _token_content(t):
    return t.get("content") if isinstance(t, dict) else t


def _special_ids(tcfg: dict, lookup: dict, config: dict, n_tokens: int) -> dict:
    """tokenizer.ggml.{bos,eos,unknown,padding}_token_id from tokenizer_config.json (config.json as fallback; an id
    outside the vocabulary there is ignored, as llama.cpp does)."""
    out = {}
    for kind, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        text = _token_content(tcfg.get(f"{kind}_token"))
        tid = lookup.get(text) if isinstance(text, str) else None
        if tid is None:
            tid = config.get(f"{kind}_token_id")
            if isinstance(tid, list):  # several eos ids: llama.cpp keeps the first
                tid = tid[0] if tid else None
        if isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < n_tokens:
            out[f"tokenizer.ggml.{key}_token_id"] = tid
    return out


def _chat_template(model_dir: Path, tcfg: dict, tcfg_path: Path) -> str | None:
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        return read_text(path)
    where = f"{tcfg_path} 'chat_template'"
    tmpl = tcfg.get("chat_template")
    if isinstance(tmpl, list):  # named templates: llama.cpp writes the default one
        tmpl = next((t.get("template") for t in _objects(tmpl, where) if t.get("name") == "default"), None)
    if tmpl is not None and not isinstance(tmpl, str):
        raise ConvertError(f"{where} must be a string or a list of {{name, template}} objects, got "
                           f"{reprlib.repr(tmpl)}")
    return tmpl


def _template_ids(item: dict, specials: dict, where: str) -> list:
    """The ids a TemplateProcessing item adds: its special token's ([] for a sequence)."""
    st = table(item, "SpecialToken", where)
    if not st:
        return []
    entry = specials.get(st.get("id")) if isinstance(st.get("id"), str) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("ids"), list):
        raise ConvertError(f"{where}: special token {reprlib.repr(st.get('id'))} has no list of ids")
    return entry["ids"]


def _post_processor_adds(tok: dict, path: Path, bos_id, eos_id) -> dict:
    """add_bos/add_eos implied by a TemplateProcessing post-processor (when tokenizer_config is silent)."""
    where = f"{path} 'post_processor'"
    pp = table(tok, "post_processor", str(path))
    steps = _objects(pp.get("processors") or [], where) if pp.get("type") == "Sequence" else [pp]
    for s in steps:
        if s.get("type") == "TemplateProcessing":
            single, specials = _objects(s.get("single") or [{}], where), table(s, "special_tokens", where)
            first, last = _template_ids(single[0], specials, where), _template_ids(single[-1], specials, where)
            return {"add_bos_token": bos_id is not None and first[:1] == [bos_id],
                    "add_eos_token": eos_id is not None and last[-1:] == [eos_id]}
    return {}


def _sentencepiece(path: Path, n_vocab: int):
    try:
        import sentencepiece
    except ImportError:
        raise ConvertError(f"{path}: reading a SentencePiece model needs `pip install sentencepiece`") from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a valid SentencePiece model ({e})") from None
    n = max(n_vocab, sp.vocab_size())
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = np.full(n, -10000.0, np.float32)
    types = np.full(n, UNUSED, np.int32)
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                    else BYTE if sp.IsByte(i) else NORMAL)
    # the model's normalizer_spec.add_dummy_prefix, observed (reading the proto would need protobuf)
    add_space_prefix = sp.encode("a", out_type=str)[0].startswith("\u2581")
    return tokens, scores, types, add_space_prefix


def _merges(model: dict, path: Path) -> list:
    """model.merges as "a b" strings (tokenizers 0.20 and later write pairs ["a", "b"])."""
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise ConvertError(f"{path} model.merges must be a list, got {reprlib.repr(merges)}")
    out = []
    for m in merges:
        if isinstance(m, list) and len(m) == 2 and all(isinstance(part, str) for part in m):
            m = " ".join(m)
        if not isinstance(m, str):
            raise ConvertError(f"{path} model.merges: {reprlib.repr(m)} is not a pair of tokens")
        out.append(m)
    return out


def _bpe(tok: dict, path: Path, n_vocab: int):
    """(tokens, token types, merges) of a byte-level BPE tokenizer.json, every id checked to lie in the vocabulary:
    config.json's vocab_size, else as many ids as the file lists tokens."""
    model = table(tok, "model", str(path))
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedError(f"{path}: tokenizer model {reprlib.repr(model.get('type'))} is not supported without "
                               "tokenizer.model (supported: byte-level BPE)")
    added = _objects(tok.get("added_tokens") or [], f"{path} 'added_tokens'")
    bound = n_vocab or len(model["vocab"]) + len(added)
    vocab = {text: _token_id(i, bound, f"{path} model.vocab[{reprlib.repr(text)}]")
             for text, i in model["vocab"].items()}
    added_types = {}
    for k, t in enumerate(added):
        where = f"{path} added_tokens[{k}]"
        if not isinstance(t.get("content"), str):
            raise ConvertError(f"{where} needs a string 'content', got {reprlib.repr(t.get('content'))}")
        if "id" not in t:
            raise ConvertError(f"{where} has no 'id'")
        i = vocab[t["content"]] = _token_id(t["id"], bound, f"{where} 'id'")
        added_types[i] = CONTROL if t.get("special") else USER_DEFINED
    n = max(n_vocab, max(vocab.values(), default=-1) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = np.full(n, UNUSED, np.int32)
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for i, kind in added_types.items():
        types[i] = kind
    return tokens, types, _merges(model, path)


def _declared_tokens(tcfg: dict, tcfg_path: Path, tokens: list, types: np.ndarray, scores):
    """Added tokens declared in tokenizer_config.json's added_tokens_decoder (SentencePiece models keep them only
    there) written into tokens / types / scores (None for BPE); ids past the vocabulary are ignored, as llama.cpp
    does."""
    for sid, t in table(tcfg, "added_tokens_decoder", str(tcfg_path)).items():
        if not (sid.isascii() and sid.isdigit()) or not isinstance(t, dict) or not isinstance(t.get("content"), str):
            raise ConvertError(f"{tcfg_path} added_tokens_decoder[{reprlib.repr(sid)}] must map a token id to an "
                               f"object with a string 'content', got {reprlib.repr(t)}")
        i = int(sid) if len(sid) < 10 else len(tokens)  # int() of thousands of digits raises
        if i < len(tokens):
            tokens[i] = t["content"]
            types[i] = CONTROL if t.get("special") else USER_DEFINED
            if scores is not None:
                scores[i] = -1000.0


def _gpt2_files(model_dir: Path, tcfg: dict) -> dict:
    """vocab.json + merges.txt (GPT2Tokenizer's own files; OPT checkpoints ship only these) as the tokenizer.json
    they stand for: GPT-2's byte-level pre-tokenizer, and the special tokens tokenizer_config.json names (and
    added_tokens.json lists) as added tokens."""
    vocab = read_object(model_dir / "vocab.json")
    lines = read_text(model_dir / "merges.txt").splitlines()
    added_path = model_dir / "added_tokens.json"
    added = [{"id": i, "content": t, "special": False}
             for t, i in (read_object(added_path) if added_path.is_file() else {}).items()]
    specials = {_token_content(tcfg.get(f"{kind}_token")) for kind in ("bos", "eos", "unk", "pad")}
    added += [{"id": vocab[t], "content": t, "special": True} for t in specials if isinstance(t, str) and t in vocab]
    merges = [m for m in lines if m and not m.startswith("#version")]
    return {"model": {"type": "BPE", "vocab": vocab, "merges": merges}, "added_tokens": added,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": bool(tcfg.get("add_prefix_space"))}}


def vocab_metadata(model_dir, config: dict) -> dict:
    """GGUF tokenizer.* keys for the tokenizer files in model_dir (numeric arrays as numpy)."""
    model_dir = Path(model_dir)
    n_vocab = integer(config, "vocab_size", 0, lo=0)
    tcfg_path = model_dir / "tokenizer_config.json"
    tcfg = read_object(tcfg_path) if tcfg_path.is_file() else {}
    md = {}
    if (model_dir / "tokenizer.model").is_file():
        path, tok = model_dir / "tokenizer.model", {}
        tokens, scores, types, add_space_prefix = _sentencepiece(path, n_vocab)
        md.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                   "tokenizer.ggml.add_space_prefix": add_space_prefix})
    elif (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.json").is_file():
        json_path = model_dir / "tokenizer.json"
        path = json_path if json_path.is_file() else model_dir / "vocab.json"
        tok = read_object(path) if path == json_path else _gpt2_files(model_dir, tcfg)
        tokens, types, merges = _bpe(tok, path, n_vocab)
        scores = None
        md.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_tokenizer_name(tok, path)})
    else:
        raise ConvertError(f"{model_dir}: no tokenizer found (expected tokenizer.model, tokenizer.json or "
                           "vocab.json + merges.txt)")
    _declared_tokens(tcfg, tcfg_path, tokens, types, scores)
    if n_vocab and len(tokens) != n_vocab:
        raise ConvertError(f"{model_dir}: tokenizer has {len(tokens)} tokens but config.json vocab_size is {n_vocab}")
    md["tokenizer.ggml.tokens"] = tokens
    if scores is not None:
        md["tokenizer.ggml.scores"] = scores
    md["tokenizer.ggml.token_type"] = types
    if md["tokenizer.ggml.model"] == "gpt2":
        if not merges:  # llama.cpp requires the key, and GGUF cannot store an empty array
            raise UnsupportedError(f"{path}: a BPE tokenizer without merges cannot be stored in GGUF")
        md["tokenizer.ggml.merges"] = merges
    lookup = {t: i for i, t in enumerate(tokens)}
    md.update(_special_ids(tcfg, lookup, config, len(tokens)))
    adds = _post_processor_adds(tok, path, md.get("tokenizer.ggml.bos_token_id"),
                                md.get("tokenizer.ggml.eos_token_id"))
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(tcfg.get(key), bool):
            adds[key] = tcfg[key]
        elif key == "add_bos_token" and md["tokenizer.ggml.model"] == "llama":
            adds.setdefault(key, True)  # SentencePiece llama tokenizers add BOS unless told otherwise
        if key in adds:
            md[f"tokenizer.ggml.{key}"] = adds[key]
    template = _chat_template(model_dir, tcfg, tcfg_path)
    if template:
        md["tokenizer.chat_template"] = template
    return md
