"""gptneox (Pythia, Dolly v2): LayerNorm with biases, fused QKV, partial neox RoPE, exact-GELU MLP with
biases, parallel residual (x + attn(ln1(x)) + mlp(ln2(x))), untied output.

Hugging Face interleaves the fused query_key_value rows per head (n_head, 3, head_dim); the GGUF file holds
them as llama.cpp's converter writes them: all Q rows, then K, then V (what llama.cpp's graph views)."""

from dataclasses import dataclass

from ..errors import UnsupportedError
from .base import DecoderConfig, meta
from .hf import classic_tensors, decoder_metadata, dims, rope_params

LAYER_TENSORS = ("attn_qkv.weight", "ffn_norm.weight")


@dataclass(frozen=True)
class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "gptneox", rope_neox=True, activation="gelu",
                        parallel_residual=meta(md, "gptneox.use_parallel_residual", True, bool))


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("GPTNeoXForCausalLM",)


def _rotary_pct(cfg: dict) -> float:
    return float((cfg.get("rope_parameters") or {}).get("partial_rotary_factor", cfg.get("rotary_pct", 1.0)))


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("attention_bias", True):
        raise UnsupportedError("gpt_neox checkpoints need hidden_act 'gelu' and attention_bias")
    d = dims(cfg)
    md = decoder_metadata(cfg, d, rope_params(cfg) | {"rope_theta": rope_params(cfg).get(
        "rope_theta", cfg.get("rotary_emb_base", 10000.0))})
    del md["attention.layer_norm_rms_epsilon"]
    return md | {"rope.dimension_count": int(d.head_dim * _rotary_pct(cfg)),
                 "attention.layer_norm_epsilon": float(cfg.get("layer_norm_eps", 1e-5)),
                 "use_parallel_residual": bool(cfg.get("use_parallel_residual", True))}


def _qkv_rows(n_head: int):
    """HF's per-head interleaved (n_head, 3, head_dim) rows -> (3, n_head, head_dim): Q, then K, then V."""
    def reorder(w):  # (3 * n_embd, ...) rows
        return w.reshape(n_head, 3, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)
    return reorder


def hf_tensors(cfg: dict) -> dict:
    d = dims(cfg)
    e, ff = d.n_embd, d.n_ff
    layer = {"input_layernorm.weight": ("attn_norm.weight", (e,)), "input_layernorm.bias": ("attn_norm.bias", (e,)),
             "attention.query_key_value.weight": ("attn_qkv.weight", (3 * e, e)),
             "attention.query_key_value.bias": ("attn_qkv.bias", (3 * e,)),
             "attention.dense.weight": ("attn_output.weight", (e, e)),
             "attention.dense.bias": ("attn_output.bias", (e,)),
             "post_attention_layernorm.weight": ("ffn_norm.weight", (e,)),
             "post_attention_layernorm.bias": ("ffn_norm.bias", (e,)),
             "mlp.dense_h_to_4h.weight": ("ffn_up.weight", (ff, e)), "mlp.dense_h_to_4h.bias": ("ffn_up.bias", (ff,)),
             "mlp.dense_4h_to_h.weight": ("ffn_down.weight", (e, ff)),
             "mlp.dense_4h_to_h.bias": ("ffn_down.bias", (e,))}
    top = {"gpt_neox.embed_in.weight": ("token_embd.weight", (d.n_vocab, e)),
           "gpt_neox.final_layer_norm.weight": ("output_norm.weight", (e,)),
           "gpt_neox.final_layer_norm.bias": ("output_norm.bias", (e,)),
           "embed_out.weight": ("output.weight", (d.n_vocab, e))}
    qkv = _qkv_rows(d.n_head)
    return classic_tensors(top, "gpt_neox.layers", d.n_layer, layer, {"attn_qkv.weight": qkv, "attn_qkv.bias": qkv})
