"""falcon (Falcon 7B / 40B style): LayerNorm with biases, fused QKV with multi-query or grouped-query attention,
neox RoPE, exact-GELU MLP, parallel attention and MLP: x + attn(attn_norm(x)) + mlp(attn_norm(x)) (7B: one norm)
or, in the new_decoder_architecture (40B), two norms named as llama.cpp's converter names them:
x + attn(attn_norm_2(x)) + mlp(attn_norm(x)) (HF ln_attn -> attn_norm_2, ln_mlp -> attn_norm); output tied or not.

Hugging Face groups the fused query_key_value rows per KV head (n_head_kv, n_head/n_head_kv + 2, head_dim) in
the new decoder architecture; the GGUF file holds them as llama.cpp's converter writes them: all Q rows, then K,
then V (the 7B multi-query layout, already in that order)."""

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from .base import DecoderConfig
from .hf import classic_tensors, decoder_metadata, dims, rope_params

LAYER_TENSORS = ("attn_qkv.weight",)


@dataclass(frozen=True)
class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "falcon", rope_neox=True, activation="gelu", parallel_residual=True)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("FalconForCausalLM",)


def _dims(cfg: dict):
    if cfg.get("alibi") or not cfg.get("parallel_attn", True) or cfg.get("activation", "gelu") != "gelu":
        raise UnsupportedError("falcon checkpoints need rotary positions (alibi false), parallel_attn and GELU")
    new = bool(cfg.get("new_decoder_architecture"))
    if new and cfg.get("num_ln_in_parallel_attn", 2) != 2:
        raise UnsupportedError("falcon new_decoder_architecture checkpoints need num_ln_in_parallel_attn 2")
    n_head = cfg.get("num_attention_heads")
    n_kv = (cfg.get("num_kv_heads") or n_head) if new else (1 if cfg.get("multi_query", True) else n_head)
    if not new and n_kv != 1:
        raise UnsupportedError("falcon checkpoints need multi_query or new_decoder_architecture")
    hidden = cfg.get("hidden_size")
    return dims({"hidden_size": hidden, "num_attention_heads": n_head, "num_key_value_heads": n_kv,
                 "num_hidden_layers": cfg.get("num_hidden_layers"), "vocab_size": cfg.get("vocab_size"),
                 "intermediate_size": cfg.get("ffn_hidden_size") or (4 * hidden if isinstance(hidden, int) else None),
                 "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}), new


def hf_metadata(cfg: dict) -> dict:
    d, _ = _dims(cfg)
    md = decoder_metadata(cfg, d, rope_params(cfg))
    del md["attention.layer_norm_rms_epsilon"]
    return md | {"attention.layer_norm_epsilon": float(cfg.get("layer_norm_epsilon", 1e-5))}


def _qkv_rows(n_head_kv: int, n_head: int):
    """HF's per-KV-head groups (n_head_kv, rep + 2, head_dim) rows -> all Q rows, then K, then V."""
    rep = n_head // n_head_kv

    def reorder(w):  # (n_head_kv * (rep + 2) * head_dim, ...) rows
        g = w.reshape(n_head_kv, rep + 2, -1, *w.shape[1:])
        return np.concatenate([g[:, :rep].reshape(-1, *w.shape[1:]), g[:, rep].reshape(-1, *w.shape[1:]),
                               g[:, rep + 1].reshape(-1, *w.shape[1:])])
    return reorder


def hf_tensors(cfg: dict) -> dict:
    d, new = _dims(cfg)
    e, ff, n_qkv = d.n_embd, d.n_ff, (d.n_head + 2 * d.n_head_kv) * d.head_dim
    norms = (("ln_attn", "attn_norm_2"), ("ln_mlp", "attn_norm")) if new else (("input_layernorm", "attn_norm"),)
    layer = {f"{hf}.{p}": (f"{gg}.{p}", (e,)) for hf, gg in norms for p in ("weight", "bias")}
    layer |= {"self_attention.query_key_value.weight": ("attn_qkv.weight", (n_qkv, e)),
              "self_attention.dense.weight": ("attn_output.weight", (e, e)),
              "mlp.dense_h_to_4h.weight": ("ffn_up.weight", (ff, e)),
              "mlp.dense_4h_to_h.weight": ("ffn_down.weight", (e, ff))}
    if cfg.get("bias"):
        layer |= {"self_attention.query_key_value.bias": ("attn_qkv.bias", (n_qkv,)),
                  "self_attention.dense.bias": ("attn_output.bias", (e,)),
                  "mlp.dense_h_to_4h.bias": ("ffn_up.bias", (ff,)), "mlp.dense_4h_to_h.bias": ("ffn_down.bias", (e,))}
    top = {"transformer.word_embeddings.weight": ("token_embd.weight", (d.n_vocab, e)),
           "transformer.ln_f.weight": ("output_norm.weight", (e,)),
           "transformer.ln_f.bias": ("output_norm.bias", (e,))}
    if not d.tied:
        top["lm_head.weight"] = ("output.weight", (d.n_vocab, e))
    qkv = _qkv_rows(d.n_head_kv, d.n_head) if new else None
    return classic_tensors(top, "transformer.h", d.n_layer, layer, {"attn_qkv.weight": qkv, "attn_qkv.bias": qkv})
