"""bloom (BigScience BLOOM, BLOOMZ): ALiBi position bias, a LayerNorm (`token_embd_norm`) right after the token
embedding, LayerNorm with biases, fused QKV with biases, GELU-tanh MLP with biases, sequential residual, output
tied to token_embd.

Hugging Face interleaves the fused query_key_value rows per head (n_head, 3, head_dim); the GGUF file holds
them as llama.cpp's converter writes them: all Q rows, then K, then V (the gptneox reorder)."""

from dataclasses import replace

from ..errors import UnsupportedError
from ..gguf import meta
from .base import DecoderConfig
from .hf import classic_tensors, decoder_metadata, number, qkv_rows, vocab, with_biases

LAYER_TENSORS = ("attn_qkv.weight",)
MAX_ALIBI_BIAS = 8.0  # llama.cpp's bloom value (transformers' build_alibi_tensor)


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "bloom", activation="gelu_tanh", use_rope=False,
                                  alibi_max_bias=meta(md, "bloom.attention.max_alibi_bias", float, MAX_ALIBI_BIAS))

    def embedding(self, w, n_ctx: int):
        """token_embd, then a LayerNorm (token_embd_norm)."""
        return replace(super().embedding(w, n_ctx), norm=w.norm("token_embd_norm", self.n_embd, self.norm_eps))


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("BloomForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("apply_residual_connection_post_layernorm"):
        raise UnsupportedError("bloom checkpoints with apply_residual_connection_post_layernorm are not supported")
    hidden = cfg.get("hidden_size", cfg.get("n_embed"))
    named = {"hidden_size": hidden, "num_attention_heads": cfg.get("n_head", cfg.get("num_attention_heads")),
             "num_hidden_layers": cfg.get("n_layer", cfg.get("num_hidden_layers")),
             "intermediate_size": 4 * hidden if isinstance(hidden, int) else None,
             "max_position_embeddings": cfg.get("seq_length", 2048)}
    md = decoder_metadata(named, layer_norm_eps=number(cfg, "layer_norm_epsilon", 1e-5))
    return md | {"attention.max_alibi_bias": MAX_ALIBI_BIAS}


def hf_tensors(cfg: dict, c: Config) -> dict:
    e, ff = c.n_embd, c.n_ff
    layer = with_biases((("input_layernorm", "attn_norm", (e,)),
                         ("self_attention.query_key_value", "attn_qkv", (3 * e, e)),
                         ("self_attention.dense", "attn_output", (e, e)),
                         ("post_attention_layernorm", "ffn_norm", (e,)),
                         ("mlp.dense_h_to_4h", "ffn_up", (ff, e)), ("mlp.dense_4h_to_h", "ffn_down", (e, ff))))
    top = with_biases((("transformer.word_embeddings_layernorm", "token_embd_norm", (e,)),
                       ("transformer.ln_f", "output_norm", (e,))))
    top["transformer.word_embeddings.weight"] = ("token_embd.weight", (vocab(cfg)[0], e))
    qkv = qkv_rows(c.n_head, c.n_head)
    return classic_tensors(top, "transformer.h", c.n_layer, layer, {"attn_qkv.weight": qkv, "attn_qkv.bias": qkv})
