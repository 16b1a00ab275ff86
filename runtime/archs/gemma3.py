"""gemma3 (text): RMSNorm (GGUF weights already hold gemma's 1 + w), per-head Q/K norms, post-attention
and post-FFN norms, GELU-tanh gated MLP, embeddings scaled by sqrt(n_embd), neox RoPE.

Layers alternate SWA_PATTERN - 1 sliding-window layers (RoPE base 10000, unscaled) with one global
layer (il % 6 == 5; `rope.freq_base` and `rope.scaling`), as llama.cpp's set_swa_pattern(6) and
transformers' Gemma3 `layer_types`."""

import math

from ..errors import UnsupportedError
from ..gguf import meta
from .base import DecoderConfig
from .hf import add_one, decoder_metadata, decoder_tensors, integer, llama_layer, number, rope_params, table, vocab

LAYER_TENSORS = ("attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                 "post_ffw_norm.weight")
SWA_PATTERN = 6
LOCAL_ROPE_BASE = 10000.0


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        n_embd = meta(md, "gemma3.embedding_length", int)
        n_head = meta(md, "gemma3.attention.head_count", int)
        head_dim = meta(md, "gemma3.attention.key_length", int, n_embd // max(n_head, 1))
        # query_pre_attn_scalar is not in GGUF: llama.cpp uses head_dim, except n_embd / n_head for 27B
        scalar = n_embd // max(n_head, 1) if meta(md, "gemma3.block_count", int, 0) == 62 else head_dim
        return cls.read(md, "gemma3", rope_neox=True, activation="gelu_tanh", embd_scale=math.sqrt(n_embd),
                        attn_scale=1.0 / math.sqrt(scalar))

    def is_global(self, il: int) -> bool:
        return il % SWA_PATTERN == SWA_PATTERN - 1

    def layer_window(self, il: int) -> int:
        return 0 if self.is_global(il) else self.sliding_window

    def layer_rope(self, il: int) -> tuple:
        return (self.rope_base, self.rope_scaling) if self.is_global(il) else (LOCAL_ROPE_BASE, None)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("Gemma3ForCausalLM",)


def _rope(cfg: dict) -> tuple:
    """(global, local) rope parameters of either transformers layout."""
    params = table(cfg, "rope_parameters")
    if "full_attention" in params:  # transformers 5: one rope dict per layer type
        where = "config.json rope_parameters"
        return table(params, "full_attention", where), table(params, "sliding_attention", where)
    return rope_params(cfg), {"rope_theta": cfg.get("rope_local_base_freq", LOCAL_ROPE_BASE)}


def hf_metadata(cfg: dict) -> dict:
    md = decoder_metadata(cfg, _rope(cfg)[0])
    head_dim = md["rope.dimension_count"]
    md |= {"attention.sliding_window": integer(cfg, "sliding_window"), "attention.key_length": head_dim,
           "attention.value_length": head_dim}
    if cfg.get("final_logit_softcapping"):
        md["final_logit_softcapping"] = number(cfg, "final_logit_softcapping")
    return md


def hf_tensors(cfg: dict, c: Config) -> dict:
    """Checks that the checkpoint uses what Config hard-codes (layer pattern, local RoPE, query scale); norm
    weights get + 1 (Gemma multiplies by 1 + w; GGUF stores the product's factor)."""
    local = _rope(cfg)[1]
    pattern = ["full_attention" if c.is_global(i) else "sliding_attention" for i in range(c.n_layer)]
    scalar = number(cfg, "query_pre_attn_scalar", c.head_dim)
    if (cfg.get("layer_types", pattern) != pattern or local.get("rope_theta", LOCAL_ROPE_BASE) != LOCAL_ROPE_BASE
            or local.get("rope_type", "default") != "default" or cfg.get("attn_logit_softcapping")
            or not math.isclose(c.scale, 1.0 / math.sqrt(scalar))):
        raise UnsupportedError("gemma3 checkpoint differs from the Gemma 3 layout llama.cpp assumes (layer_types "
                               "pattern, local rope_theta 10000, query_pre_attn_scalar, no attention softcapping)")
    layer = llama_layer(c) | {"post_attention_layernorm.weight": ("post_attention_norm.weight", (c.n_embd,)),
                              "pre_feedforward_layernorm.weight": ("ffn_norm.weight", (c.n_embd,)),
                              "post_feedforward_layernorm.weight": ("post_ffw_norm.weight", (c.n_embd,)),
                              "self_attn.q_norm.weight": ("attn_q_norm.weight", (c.head_dim,)),
                              "self_attn.k_norm.weight": ("attn_k_norm.weight", (c.head_dim,))}
    norms = {gg for gg, _ in layer.values() if "norm" in gg} | {"output_norm.weight"}
    return decoder_tensors(c, vocab(cfg, tied_default=True), layer, dict.fromkeys(norms, add_one))
