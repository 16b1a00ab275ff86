"""phi2 (Phi-1.5, Phi-2): one LayerNorm with biases feeding attention and MLP in parallel
(x + attn(ln(x)) + mlp(ln(x))), separate Q/K/V with biases, partial neox RoPE, GELU-tanh MLP with biases,
untied output with a bias (`output.bias`)."""

from dataclasses import dataclass

from ..errors import UnsupportedError
from .base import DecoderConfig
from .hf import classic_tensors, decoder_metadata, dims, rope_params, with_biases

LAYER_TENSORS = ()


@dataclass(frozen=True)
class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "phi2", rope_neox=True, activation="gelu_tanh", parallel_residual=True)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("PhiForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("hidden_act", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh") or cfg.get("qk_layernorm"):
        raise UnsupportedError("phi checkpoints need hidden_act gelu_new and no qk_layernorm")
    d = dims(cfg)
    params = rope_params(cfg)
    factor = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5)))
    md = decoder_metadata(cfg, d, params)
    del md["attention.layer_norm_rms_epsilon"]
    return md | {"rope.dimension_count": int(d.head_dim * factor),
                 "attention.layer_norm_epsilon": float(cfg.get("layer_norm_eps", 1e-5))}


def hf_tensors(cfg: dict) -> dict:
    d = dims(cfg)
    e, ff, q, kv = d.n_embd, d.n_ff, d.n_head * d.head_dim, d.n_head_kv * d.head_dim
    layer = with_biases((("input_layernorm", "attn_norm", (e,)), ("self_attn.q_proj", "attn_q", (q, e)),
                         ("self_attn.k_proj", "attn_k", (kv, e)), ("self_attn.v_proj", "attn_v", (kv, e)),
                         ("self_attn.dense", "attn_output", (e, q)), ("mlp.fc1", "ffn_up", (ff, e)),
                         ("mlp.fc2", "ffn_down", (e, ff))))
    top = {"model.embed_tokens.weight": ("token_embd.weight", (d.n_vocab, e)),
           "model.final_layernorm.weight": ("output_norm.weight", (e,)),
           "model.final_layernorm.bias": ("output_norm.bias", (e,)),
           "lm_head.weight": ("output.weight", (d.n_vocab, e)), "lm_head.bias": ("output.bias", (d.n_vocab,))}
    return classic_tensors(top, "model.layers", d.n_layer, layer)
