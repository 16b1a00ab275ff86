"""Shared pieces of the Hugging Face -> GGUF mappings that live in each runtime/archs/<arch>.py (the converter,
runtime/convert/, reads them; this module needs nothing of it).

An architecture module that can be converted defines:
  HF_ARCHITECTURES = ("LlamaForCausalLM", ...)    # config.json "architectures" it accepts
  hf_metadata(cfg) -> dict                          # config.json -> `{arch}.*` keys without the prefix
  hf_tensors(cfg, config) -> dict[str, HFTensor]    # every expected HF tensor: GGUF name, shape, transform
`hf_config` reads the architecture's Config from hf_metadata's keys with the loader's own from_metadata, so
hf_tensors' shapes come from the one hyperparameter record the runtime uses. Most decoders are built from
`decoder_metadata`, `vocab`, `llama_layer` and `decoder_tensors` below. config.json is untrusted input: its numbers
and objects are read with `integer`, `number` and `table`, which check type and range and name the key in a
ConvertError.
"""

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConvertError, GGUFError, UnsupportedError

# HF tensors a checkpoint may carry that GGUF drops (recomputed at load time)
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class HFTensor:
    gguf: str  # GGUF tensor name
    shape: tuple  # expected numpy shape in the checkpoint
    transform: Callable | None = None  # float32 array -> float32 array (of out_shape)
    expert: int | None = None  # slice `expert` of a GGUF tensor stacking n_expert HF tensors on a new first axis
    out_shape: tuple | None = None  # GGUF shape when transform changes it (None: same as shape)


INT_MAX = 2**31 - 1  # GGUF stores hyperparameters as uint32 and llama.cpp reads them as int32


def _value(cfg: dict, key: str, default, where: str):
    v = cfg.get(key)
    if v is None:
        if default is None:
            raise ConvertError(f"{where} has no {key!r}")
        return default
    return v


def integer(cfg: dict, key: str, default: int | None = None, lo: int = 1, where: str = "config.json") -> int:
    """cfg[key] (default when absent or null) checked to be an integer (not a bool) in lo..INT_MAX; ConvertError
    names `where` (the file, and the part of it cfg is) and the key."""
    v = _value(cfg, key, default, where)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= INT_MAX:
        raise ConvertError(f"{where} {key!r} must be an integer in {lo}..{INT_MAX}, got {reprlib.repr(v)}")
    return v


def number(cfg: dict, key: str, default: float | None = None, hi: float = math.inf,
           where: str = "config.json") -> float:
    """cfg[key] (default when absent or null) checked to be a finite number in (0, hi], as a float."""
    v = _value(cfg, key, default, where)
    x = math.nan
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        x = float(v) if abs(v) < 2**1000 else math.inf  # float() of a larger int overflows
    if not (0 < x <= hi and math.isfinite(x)):
        bound = f" <= {hi}" if hi < math.inf else ""
        raise ConvertError(f"{where} {key!r} must be a positive finite number{bound}, got {reprlib.repr(v)}")
    return x


def table(cfg: dict, key: str, where: str = "config.json") -> dict:
    """cfg[key] checked to be a JSON object ({} when absent or null)."""
    v = cfg.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConvertError(f"{where} {key!r} must be an object, got {reprlib.repr(v)}")
    return v


def vocab(cfg: dict, tied_default: bool = False) -> tuple:
    """(n_vocab, tied): config.json's vocab_size, and whether the output projection shares token_embd."""
    return integer(cfg, "vocab_size"), bool(cfg.get("tie_word_embeddings", tied_default))


def hf_config(mod, arch: str, cfg: dict) -> tuple:
    """(`{arch}.*` metadata, mod.Config) of config.json: the Config is read from the metadata the converter writes,
    as the loader reads it; a value it rejects is reported against config.json."""
    md = {f"{arch}.{k}": v for k, v in mod.hf_metadata(cfg).items()}
    try:
        return md, mod.Config.from_metadata(md)
    except GGUFError as e:
        raise ConvertError(f"config.json describes no valid {arch} model: {e}") from None


ROPE = "config.json (RoPE)"  # `where` of rope_params' keys


def rope_metadata(params: dict) -> dict:
    """`rope.*` keys from a rope parameter dict (transformers 5 `rope_parameters`, or older top-level keys)."""
    md = {"rope.freq_base": number(params, "rope_theta", 10000.0, where=ROPE)}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "yarn"):
        raise UnsupportedError(f"RoPE scaling {reprlib.repr(kind)} is not supported by the converter (default, "
                               "linear, yarn)")
    if kind != "default":
        md.update({"rope.scaling.type": kind, "rope.scaling.factor": number(params, "factor", where=ROPE)})
    if kind == "yarn":
        md["rope.scaling.original_context_length"] = integer(params, "original_max_position_embeddings", where=ROPE)
    return md


def rope_params(cfg: dict) -> dict:
    """The rope parameter dict of a text config in either transformers layout."""
    params = dict(table(cfg, "rope_parameters"))
    if not params:
        params = dict(table(cfg, "rope_scaling"))
        if "rope_theta" in cfg:
            params["rope_theta"] = cfg["rope_theta"]
    return params


def decoder_metadata(cfg: dict, rope: dict | None = None, layer_norm_eps: float | None = None) -> dict:
    """The common `{arch}.*` keys of a decoder (DESIGN §1) from config.json values under transformers' llama names
    (hidden_size, num_attention_heads, ...; an architecture naming them otherwise passes a renamed dict).
    rope: rope parameters (rope_params), None without RoPE; layer_norm_eps: a LayerNorm's epsilon (checked by the
    caller, as `number` does), None for RMSNorm (config.json's rms_norm_eps)."""
    n_embd, n_head = integer(cfg, "hidden_size"), integer(cfg, "num_attention_heads")
    n_head_kv = integer(cfg, "num_key_value_heads", n_head)
    if n_head % n_head_kv:
        raise ConvertError(f"config.json num_attention_heads {n_head} is not a multiple of num_key_value_heads "
                           f"{n_head_kv}")
    head_dim = integer({"head_dim": cfg.get("head_dim") or n_embd // n_head}, "head_dim")
    md = {
        "context_length": integer(cfg, "max_position_embeddings", 2048),
        "embedding_length": n_embd, "block_count": integer(cfg, "num_hidden_layers"),
        "feed_forward_length": integer(cfg, "intermediate_size"),
        "attention.head_count": n_head, "attention.head_count_kv": n_head_kv,
    }
    if layer_norm_eps is None:
        md["attention.layer_norm_rms_epsilon"] = number(cfg, "rms_norm_eps", 1e-6)
    else:
        md["attention.layer_norm_epsilon"] = layer_norm_eps
    if head_dim != n_embd // n_head:
        md.update({"attention.key_length": head_dim, "attention.value_length": head_dim})
    if rope is not None:
        md["rope.dimension_count"] = head_dim
        md.update(rope_metadata(rope))
    return md


def permute_rope(n_head: int) -> Callable:
    """HF rotate-half Q/K rows -> llama.cpp's adjacent-pair order (DESIGN §1 RoPE), per head."""
    def permute(w: np.ndarray) -> np.ndarray:  # (n_head * head_dim, ...) rows
        return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
                .swapaxes(1, 2).reshape(w.shape))
    return permute


def llama_layer(d) -> dict:
    """HF suffix within `model.layers.N.` -> (GGUF suffix within `blk.N.`, shape) of a llama-style block of Config d."""
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    return {
        "input_layernorm.weight": ("attn_norm.weight", (d.n_embd,)),
        "self_attn.q_proj.weight": ("attn_q.weight", (q, d.n_embd)),
        "self_attn.k_proj.weight": ("attn_k.weight", (kv, d.n_embd)),
        "self_attn.v_proj.weight": ("attn_v.weight", (kv, d.n_embd)),
        "self_attn.o_proj.weight": ("attn_output.weight", (d.n_embd, q)),
        "post_attention_layernorm.weight": ("ffn_norm.weight", (d.n_embd,)),
        "mlp.gate_proj.weight": ("ffn_gate.weight", (d.n_ff, d.n_embd)),
        "mlp.up_proj.weight": ("ffn_up.weight", (d.n_ff, d.n_embd)),
        "mlp.down_proj.weight": ("ffn_down.weight", (d.n_embd, d.n_ff)),
    }


def moe_layer(d) -> dict:
    """llama_layer with Mixtral's `block_sparse_moe` (router `gate`, experts' w1/w3/w2 = gate/up/down, stacked
    into `ffn_{gate,up,down}_exps`) in place of the MLP; entries (GGUF suffix, shape, expert index)."""
    layer = {k: v for k, v in llama_layer(d).items() if not k.startswith("mlp.")}
    layer["block_sparse_moe.gate.weight"] = ("ffn_gate_inp.weight", (d.n_expert, d.n_embd))
    for e in range(d.n_expert):
        for w, gg, shape in (("w1", "ffn_gate_exps", (d.n_ff, d.n_embd)), ("w3", "ffn_up_exps", (d.n_ff, d.n_embd)),
                             ("w2", "ffn_down_exps", (d.n_embd, d.n_ff))):
            layer[f"block_sparse_moe.experts.{e}.{w}.weight"] = (gg + ".weight", shape, e)
    return layer


def decoder_tensors(d, vocab: tuple, layer: dict, transforms: dict | None = None) -> dict:
    """Every HF tensor of a decoder of Config d with vocab (n_vocab, tied): embeddings, final norm, `lm_head` unless
    tied, and `layer` per block (entries (GGUF suffix, shape) or (GGUF suffix, shape, expert index)).
    transforms maps a GGUF suffix ('attn_q.weight', 'output_norm.weight', ...) to a function."""
    transforms, (n_vocab, tied) = transforms or {}, vocab
    out = {
        "model.embed_tokens.weight": HFTensor("token_embd.weight", (n_vocab, d.n_embd)),
        "model.norm.weight": HFTensor("output_norm.weight", (d.n_embd,), transforms.get("output_norm.weight")),
    }
    if not tied:
        out["lm_head.weight"] = HFTensor("output.weight", (n_vocab, d.n_embd))
    for i in range(d.n_layer):
        for hf, (gg, shape, *expert) in layer.items():
            out[f"model.layers.{i}.{hf}"] = HFTensor(f"blk.{i}.{gg}", shape, transforms.get(gg), *expert)
    return out


def classic_tensors(top: dict, layer_prefix: str, n_layer: int, layer: dict, transforms: dict | None = None) -> dict:
    """Every HF tensor of a checkpoint named unlike llama's (GPT-2, GPT-NeoX): `top` maps full HF names, `layer`
    suffixes within `{layer_prefix}.N.`, each to (GGUF name or suffix within `blk.N.`, shape); transforms maps a
    GGUF suffix to a function."""
    transforms = transforms or {}
    out = {hf: HFTensor(gg, shape, transforms.get(gg)) for hf, (gg, shape) in top.items()}
    for i in range(n_layer):
        for hf, (gg, shape) in layer.items():
            out[f"{layer_prefix}.{i}.{hf}"] = HFTensor(f"blk.{i}.{gg}", shape, transforms.get(gg))
    return out


def with_biases(entries) -> dict:
    """classic_tensors `layer` entries from (HF module, GGUF module, weight shape) triples, each module with a
    weight and a bias (of the weight's first dimension)."""
    out = {}
    for hf, gg, shape in entries:
        out |= {f"{hf}.weight": (f"{gg}.weight", shape), f"{hf}.bias": (f"{gg}.bias", shape[:1])}
    return out


def qkv_rows(n_head_kv: int, n_head: int) -> Callable:
    """Fused QKV rows grouped per KV head as Hugging Face stores them, (n_head_kv, n_head/n_head_kv + 2, head_dim):
    the head's queries, its key, its value (GPT-NeoX and BLOOM: n_head_kv = n_head, per head q, k, v) -> llama.cpp's
    order: all Q rows, then K, then V."""
    rep = n_head // n_head_kv

    def reorder(w: np.ndarray) -> np.ndarray:  # (n_head_kv * (rep + 2) * head_dim, ...) rows
        g = w.reshape(n_head_kv, rep + 2, -1, *w.shape[1:])
        return np.concatenate([g[:, :rep].reshape(-1, *w.shape[1:]), g[:, rep].reshape(-1, *w.shape[1:]),
                               g[:, rep + 1].reshape(-1, *w.shape[1:])])
    return reorder


def transpose(w: np.ndarray) -> np.ndarray:
    """GPT-2's Conv1D stores weights (n_in, n_out); GGUF matrices are (n_out, n_in)."""
    return np.ascontiguousarray(w.T)


def add_one(w: np.ndarray) -> np.ndarray:
    """Gemma stores RMSNorm weights as w - 1 (it multiplies by 1 + w); GGUF stores 1 + w."""
    return w + np.float32(1.0)
