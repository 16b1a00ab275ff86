"""bloom (BigScience BLOOM, BLOOMZ): ALiBi position bias, a LayerNorm (`token_embd_norm`) right after the token
embedding, LayerNorm with biases, fused QKV with biases, GELU-tanh MLP with biases, sequential residual, output
tied to token_embd.

Hugging Face interleaves the fused query_key_value rows per head (n_head, 3, head_dim); the GGUF file holds
them as llama.cpp's converter writes them: all Q rows, then K, then V (the gptneox reorder)."""

from dataclasses import dataclass

from ..errors import UnsupportedError
from .base import DecoderConfig, meta
from .gptneox import _qkv_rows
from .hf import classic_tensors, dims, with_biases

LAYER_TENSORS = ("attn_qkv.weight",)
MAX_ALIBI_BIAS = 8.0  # llama.cpp's bloom value (transformers' build_alibi_tensor)


@dataclass(frozen=True)
class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "bloom", activation="gelu_tanh", use_rope=False,
                        alibi_max_bias=meta(md, "bloom.attention.max_alibi_bias", MAX_ALIBI_BIAS, float))


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("BloomForCausalLM",)


def _dims(cfg: dict):
    if cfg.get("apply_residual_connection_post_layernorm"):
        raise UnsupportedError("bloom checkpoints with apply_residual_connection_post_layernorm are not supported")
    hidden = cfg.get("hidden_size", cfg.get("n_embed"))
    return dims({"hidden_size": hidden, "num_attention_heads": cfg.get("n_head", cfg.get("num_attention_heads")),
                 "num_hidden_layers": cfg.get("n_layer", cfg.get("num_hidden_layers")),
                 "vocab_size": cfg.get("vocab_size"), "tie_word_embeddings": True,
                 "intermediate_size": 4 * hidden if isinstance(hidden, int) else None})


def hf_metadata(cfg: dict) -> dict:
    d = _dims(cfg)
    return {"context_length": int(cfg.get("seq_length", 2048)), "embedding_length": d.n_embd,
            "block_count": d.n_layer, "feed_forward_length": d.n_ff, "attention.head_count": d.n_head,
            "attention.head_count_kv": d.n_head, "attention.max_alibi_bias": MAX_ALIBI_BIAS,
            "attention.layer_norm_epsilon": float(cfg.get("layer_norm_epsilon", 1e-5))}


def hf_tensors(cfg: dict) -> dict:
    d = _dims(cfg)
    e, ff = d.n_embd, d.n_ff
    layer = with_biases((("input_layernorm", "attn_norm", (e,)),
                         ("self_attention.query_key_value", "attn_qkv", (3 * e, e)),
                         ("self_attention.dense", "attn_output", (e, e)),
                         ("post_attention_layernorm", "ffn_norm", (e,)),
                         ("mlp.dense_h_to_4h", "ffn_up", (ff, e)), ("mlp.dense_4h_to_h", "ffn_down", (e, ff))))
    top = {"transformer.word_embeddings.weight": ("token_embd.weight", (d.n_vocab, e))}
    for hf, gg in (("word_embeddings_layernorm", "token_embd_norm"), ("ln_f", "output_norm")):
        top |= {f"transformer.{hf}.{p}": (f"{gg}.{p}", (e,)) for p in ("weight", "bias")}
    qkv = _qkv_rows(d.n_head)
    return classic_tensors(top, "transformer.h", d.n_layer, layer, {"attn_qkv.weight": qkv, "attn_qkv.bias": qkv})
