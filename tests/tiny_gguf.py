"""A tiny but complete llama GGUF (byte-level BPE vocabulary, one layer, Q8_0 and F32 tensors), written with the
`gguf` package's own writer: the seed of the hardening and fuzz tests. Metadata keys can be overridden or removed."""

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_CTX = 64, 128, 4, 2, 64
REMOVE = object()  # an override value that deletes the key


def _byte_chars() -> list:
    """GPT-2's byte -> printable character map, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    extra = [b for b in range(256) if b not in bs]
    table = dict(zip(bs, bs, strict=True)) | {b: 256 + i for i, b in enumerate(extra)}
    return [chr(table[b]) for b in range(256)]


def vocabulary() -> tuple:
    """(tokens, token types, merges): the 256 byte tokens, two merges, an end-of-text control token."""
    tokens = _byte_chars() + ["Ġt", "he", "<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, types, ["Ġ t", "h e"]


def metadata() -> dict:
    tokens, types, merges = vocabulary()
    a = "llama."
    return {
        a + "context_length": N_CTX, a + "embedding_length": N_EMBD, a + "block_count": 1,
        a + "feed_forward_length": N_FF, a + "attention.head_count": N_HEAD, a + "attention.head_count_kv": N_HEAD_KV,
        a + "attention.layer_norm_rms_epsilon": 1e-5, a + "rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 1, "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.ggml.add_bos_token": False,
    }


def tensors(seed: int = 0) -> dict:
    """name -> (array, ggml type): matrices Q8_0, norms F32."""
    rng = np.random.default_rng(seed)
    n_vocab, hd = len(vocabulary()[0]), N_EMBD // N_HEAD

    def q8(rows, cols):
        return quantize(rng.normal(0, 0.2, (rows, cols)).astype(np.float32), GGMLQuantizationType.Q8_0), \
            GGMLQuantizationType.Q8_0

    def norm(n):
        return (1 + rng.normal(0, 0.1, n)).astype(np.float32), GGMLQuantizationType.F32

    return {"token_embd.weight": q8(n_vocab, N_EMBD), "output_norm.weight": norm(N_EMBD),
            "blk.0.attn_norm.weight": norm(N_EMBD), "blk.0.attn_q.weight": q8(N_HEAD * hd, N_EMBD),
            "blk.0.attn_k.weight": q8(N_HEAD_KV * hd, N_EMBD), "blk.0.attn_v.weight": q8(N_HEAD_KV * hd, N_EMBD),
            "blk.0.attn_output.weight": q8(N_EMBD, N_HEAD * hd), "blk.0.ffn_norm.weight": norm(N_EMBD),
            "blk.0.ffn_gate.weight": q8(N_FF, N_EMBD), "blk.0.ffn_up.weight": q8(N_FF, N_EMBD),
            "blk.0.ffn_down.weight": q8(N_EMBD, N_FF)}


def write(path, overrides: dict | None = None, tensor_overrides: dict | None = None):
    """Write the tiny model to `path`; `overrides` replace metadata values (REMOVE deletes a key; the value's
    Python type picks the GGUF type: bool -> BOOL, int -> INT32/UINT32, float -> FLOAT32, str, list)."""
    w = GGUFWriter(str(path), "llama")
    for key, value in (metadata() | (overrides or {})).items():
        if value is not REMOVE:
            _add(w, key, value)
    for name, (array, qtype) in (tensors() | (tensor_overrides or {})).items():
        w.add_tensor(name, array, raw_dtype=qtype if qtype != GGMLQuantizationType.F32 else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add(w: GGUFWriter, key: str, value):
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        (w.add_int32 if value < 0 else w.add_uint32)(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, value)
