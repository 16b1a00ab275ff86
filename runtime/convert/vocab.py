"""Hugging Face tokenizer files -> GGUF `tokenizer.*` metadata, as llama.cpp's convert_hf_to_gguf writes it.

- `tokenizer.model` (SentencePiece) -> `tokenizer.ggml.model = "llama"` with tokens, scores, token types.
- `tokenizer.json` (byte-level BPE) -> `"gpt2"` with tokens, token types, merges and `tokenizer.ggml.pre`;
  without it, GPT2Tokenizer's `vocab.json` + `merges.txt` (as OPT ships them) stand for GPT-2's tokenizer.json.
  llama.cpp picks `pre` by hashing the tokenizer's output on a check text, which only knows published
  vocabularies; we map the pre-tokenizer steps declared in tokenizer.json instead (names llama.cpp accepts,
  listed in PRE_TOKENIZERS; the normalizer is ignored, as llama.cpp does) and refuse other steps.
- `tokenizer_config.json` (+ `chat_template.jinja`): special token ids, add_bos/add_eos, chat template.
"""

import json
from pathlib import Path

import numpy as np

from ..errors import ConvertError, UnsupportedError

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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read JSON ({e})") from None


def _step(s: dict) -> tuple:
    """One tokenizer.json pre-tokenizer step as a comparable tuple (its type and the options that change ids)."""
    kind = s.get("type")
    if kind == "Split":
        pattern = s.get("pattern") or {}
        return kind, pattern.get("Regex", pattern.get("String")), s.get("behavior"), bool(s.get("invert"))
    if kind == "ByteLevel":
        return kind, bool(s.get("add_prefix_space")), bool(s.get("use_regex", True))
    if kind == "Digits":
        return kind, bool(s.get("individual_digits"))
    if kind == "Punctuation":
        return kind, s.get("behavior", "Isolated")
    return (kind,)


def _pre_tokenizer_name(tok: dict, path: Path) -> str:
    pt = tok.get("pre_tokenizer") or {}
    steps = tuple(map(_step, pt.get("pretokenizers", []) if pt.get("type") == "Sequence" else [pt]))
    key = (steps, bool((tok.get("model") or {}).get("ignore_merges")))
    if key not in PRE_TOKENIZERS:
        raise UnsupportedError(f"{path}: BPE pre-tokenizer not recognized (steps {list(steps)}, ignore_merges "
                               f"{key[1]}); known: {', '.join(PRE_TOKENIZERS.values())}")
    return PRE_TOKENIZERS[key]


def _token_content(t):
    return t.get("content") if isinstance(t, dict) else t


def _special_ids(model_dir: Path, tcfg: dict, lookup, config: dict) -> dict:
    """tokenizer.ggml.{bos,eos,unknown,padding}_token_id from tokenizer_config.json (config.json as fallback)."""
    out = {}
    for kind, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        text = _token_content(tcfg.get(f"{kind}_token"))
        tid = lookup.get(text) if isinstance(text, str) else None
        if tid is None:
            tid = config.get(f"{kind}_token_id")
            if isinstance(tid, list):  # several eos ids: llama.cpp keeps the first
                tid = tid[0] if tid else None
        if isinstance(tid, int) and tid >= 0:
            out[f"tokenizer.ggml.{key}_token_id"] = tid
    return out


def _chat_template(model_dir: Path, tcfg: dict):
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    tmpl = tcfg.get("chat_template")
    if isinstance(tmpl, list):  # named templates: llama.cpp writes the default one
        tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
    return tmpl if isinstance(tmpl, str) else None


def _template_ids(item: dict, specials: dict) -> list:
    st = item.get("SpecialToken")
    return specials.get(st.get("id"), {}).get("ids", []) if st else []


def _post_processor_adds(tok: dict, bos_id, eos_id) -> dict:
    """add_bos/add_eos implied by a TemplateProcessing post-processor (when tokenizer_config is silent)."""
    pp = tok.get("post_processor") or {}
    steps = pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]
    for s in steps:
        single, specials = s.get("single") or [{}], s.get("special_tokens", {})
        if s.get("type") == "TemplateProcessing":
            first, last = _template_ids(single[0], specials), _template_ids(single[-1], specials)
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


def _bpe(tok: dict, path: Path, n_vocab: int):
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedError(f"{path}: tokenizer model {model.get('type')!r} is not supported without "
                               "tokenizer.model (supported: byte-level BPE)")
    vocab = dict(model["vocab"])
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    n = max(n_vocab, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = np.full(n, UNUSED, np.int32)
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for t in tok.get("added_tokens", []):
        types[t["id"]] = CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges, vocab


def _gpt2_files(model_dir: Path, tcfg: dict) -> dict:
    """vocab.json + merges.txt (GPT2Tokenizer's own files; OPT checkpoints ship only these) as the tokenizer.json
    they stand for: GPT-2's byte-level pre-tokenizer, and the special tokens tokenizer_config.json names (and
    added_tokens.json lists) as added tokens."""
    vocab = _read_json(model_dir / "vocab.json")
    try:
        lines = (model_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConvertError(f"{model_dir / 'merges.txt'}: cannot read ({e})") from None
    added_path = model_dir / "added_tokens.json"
    added = [{"id": i, "content": t, "special": False}
             for t, i in (_read_json(added_path) if added_path.is_file() else {}).items()]
    specials = {_token_content(tcfg.get(f"{kind}_token")) for kind in ("bos", "eos", "unk", "pad")}
    added += [{"id": vocab[t], "content": t, "special": True} for t in specials if isinstance(t, str) and t in vocab]
    merges = [m for m in lines if m and not m.startswith("#version")]
    return {"model": {"type": "BPE", "vocab": vocab, "merges": merges}, "added_tokens": added,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": bool(tcfg.get("add_prefix_space"))}}


def vocab_metadata(model_dir, config: dict) -> dict:
    """GGUF tokenizer.* keys for the tokenizer files in model_dir (numeric arrays as numpy)."""
    model_dir = Path(model_dir)
    n_vocab = int(config.get("vocab_size") or 0)
    tcfg_path = model_dir / "tokenizer_config.json"
    tcfg = _read_json(tcfg_path) if tcfg_path.is_file() else {}
    md = {}
    if (model_dir / "tokenizer.model").is_file():
        tokens, scores, types, add_space_prefix = _sentencepiece(model_dir / "tokenizer.model", n_vocab)
        md.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                   "tokenizer.ggml.add_space_prefix": add_space_prefix})
        tok = {}
    elif (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.json").is_file():
        json_path = model_dir / "tokenizer.json"
        path = json_path if json_path.is_file() else model_dir / "vocab.json"
        tok = _read_json(path) if path == json_path else _gpt2_files(model_dir, tcfg)
        tokens, types, merges, _ = _bpe(tok, path, n_vocab)
        scores = None
        md.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _pre_tokenizer_name(tok, path)})
    else:
        raise ConvertError(f"{model_dir}: no tokenizer found (expected tokenizer.model, tokenizer.json or "
                           "vocab.json + merges.txt)")
    # added tokens declared in tokenizer_config.json (SentencePiece models keep them only there)
    for sid, t in (tcfg.get("added_tokens_decoder") or {}).items():
        i = int(sid)
        if i < len(tokens) and isinstance(t, dict) and "content" in t:
            tokens[i] = t["content"]
            types[i] = CONTROL if t.get("special") else USER_DEFINED
            if scores is not None:
                scores[i] = -1000.0
    if n_vocab and len(tokens) != n_vocab:
        raise ConvertError(f"{model_dir}: tokenizer has {len(tokens)} tokens but config.json vocab_size is {n_vocab}")
    md["tokenizer.ggml.tokens"] = tokens
    if scores is not None:
        md["tokenizer.ggml.scores"] = scores
    md["tokenizer.ggml.token_type"] = types
    if md["tokenizer.ggml.model"] == "gpt2":
        if not merges:  # llama.cpp requires the key, and GGUF cannot store an empty array
            raise UnsupportedError(f"{model_dir / 'tokenizer.json'}: a BPE tokenizer without merges cannot be "
                                   "stored in GGUF")
        md["tokenizer.ggml.merges"] = merges
    lookup = {t: i for i, t in enumerate(tokens)}
    md.update(_special_ids(model_dir, tcfg, lookup, config))
    adds = _post_processor_adds(tok, md.get("tokenizer.ggml.bos_token_id"), md.get("tokenizer.ggml.eos_token_id"))
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(tcfg.get(key), bool):
            adds[key] = tcfg[key]
        elif key == "add_bos_token" and md["tokenizer.ggml.model"] == "llama":
            adds.setdefault(key, True)  # SentencePiece llama tokenizers add BOS unless told otherwise
        if key in adds:
            md[f"tokenizer.ggml.{key}"] = adds[key]
    template = _chat_template(model_dir, tcfg)
    if template:
        md["tokenizer.chat_template"] = template
    return md
