"""llama (and Mistral-style sliding window, Mixtral's mixture of experts): RMSNorm, SwiGLU, normal RoPE
(adjacent pairs).

The GGUF converter permutes Q/K rows from Hugging Face's rotate-half order into adjacent pairs, so
llama applies normal RoPE where qwen2 and gemma3 (unpermuted) apply neox RoPE."""

from ..errors import ConvertError, UnsupportedError
from .base import DecoderConfig
from .hf import decoder_metadata, decoder_tensors, integer, llama_layer, moe_layer, permute_rope, rope_params, vocab

LAYER_TENSORS = ()  # beyond the common attn_norm, attn_{q,k,v,output}, ffn_norm, ffn_{gate,up,down}


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read(md, "llama")


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")


def hf_metadata(cfg: dict) -> dict:
    md = decoder_metadata(cfg, rope_params(cfg))
    window = integer(cfg, "sliding_window", 0, lo=0)  # Mistral
    if window:
        md["attention.sliding_window"] = window
    if "num_local_experts" in cfg:  # Mixtral
        md["expert_count"], md["expert_used_count"] = _experts(cfg)
    return md


def _experts(cfg: dict) -> tuple:
    """(num_local_experts, num_experts_per_tok) of a Mixtral config.json."""
    n, k = integer(cfg, "num_local_experts"), integer(cfg, "num_experts_per_tok")
    if k > n:
        raise ConvertError(f"config.json num_experts_per_tok {k} must not exceed num_local_experts {n}")
    return n, k


def hf_tensors(cfg: dict, c: Config) -> dict:
    """Q/K rows permuted from rotate-half to adjacent pairs (normal RoPE, see the module docstring)."""
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UnsupportedError("llama checkpoints with attention_bias or mlp_bias are not supported")
    return decoder_tensors(c, vocab(cfg), moe_layer(c) if c.n_expert else llama_layer(c),
                           {"attn_q.weight": permute_rope(c.n_head), "attn_k.weight": permute_rope(c.n_head_kv)})
