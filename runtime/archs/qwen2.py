"""qwen2: llama with Q/K/V biases and neox RoPE (pairs i, i + head_dim/2)."""

from dataclasses import dataclass

from ..errors import UnsupportedError
from .base import DecoderConfig
from .hf import decoder_metadata, decoder_tensors, dims, llama_layer, rope_params

LAYER_TENSORS = ("attn_q.bias", "attn_k.bias", "attn_v.bias")


@dataclass(frozen=True)
class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read(md, "qwen2", rope_neox=True)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("Qwen2ForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("use_sliding_window"):
        raise UnsupportedError("Qwen2 checkpoints with use_sliding_window are not supported")
    return decoder_metadata(cfg, dims(cfg), rope_params(cfg))


def hf_tensors(cfg: dict) -> dict:
    d = dims(cfg)
    q, kv = d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    layer = llama_layer(d) | {"self_attn.q_proj.bias": ("attn_q.bias", (q,)),
                              "self_attn.k_proj.bias": ("attn_k.bias", (kv,)),
                              "self_attn.v_proj.bias": ("attn_v.bias", (kv,))}
    return decoder_tensors(d, layer)
