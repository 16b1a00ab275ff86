"""qwen2: llama with Q/K/V biases and neox RoPE (pairs i, i + head_dim/2)."""

from ..errors import UnsupportedError
from .base import DecoderConfig
from .hf import decoder_metadata, decoder_tensors, llama_layer, rope_params, vocab

LAYER_TENSORS = ("attn_q.bias", "attn_k.bias", "attn_v.bias")


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read(md, "qwen2", rope_neox=True)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("Qwen2ForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("use_sliding_window"):
        raise UnsupportedError("Qwen2 checkpoints with use_sliding_window are not supported")
    return decoder_metadata(cfg, rope_params(cfg))


def hf_tensors(cfg: dict, c: Config) -> dict:
    q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    layer = llama_layer(c) | {"self_attn.q_proj.bias": ("attn_q.bias", (q,)),
                              "self_attn.k_proj.bias": ("attn_k.bias", (kv,)),
                              "self_attn.v_proj.bias": ("attn_v.bias", (kv,))}
    return decoder_tensors(c, vocab(cfg), layer)
