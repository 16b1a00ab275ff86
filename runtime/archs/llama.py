"""llama (and Mistral-style sliding window, Mixtral's mixture of experts): RMSNorm, SwiGLU, normal RoPE
(adjacent pairs).

The GGUF converter permutes Q/K rows from Hugging Face's rotate-half order into adjacent pairs, so
llama applies normal RoPE where qwen2 and gemma3 (unpermuted) apply neox RoPE."""

from ..errors import ConvertError, UnsupportedError
from .base import DecoderConfig
from .hf import decoder_metadata, decoder_tensors, llama_layer, moe_layer, permute_rope, rope_params, vocab

LAYER_TENSORS = ()  # beyond the common attn_norm, attn_{q,k,v,output}, ffn_norm, ffn_{gate,up,down}


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read(md, "llama")


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")


def hf_metadata(cfg: dict) -> dict:
    md = decoder_metadata(cfg, rope_params(cfg))
    if cfg.get("sliding_window"):  # Mistral
        md["attention.sliding_window"] = int(cfg["sliding_window"])
    if "num_local_experts" in cfg:  # Mixtral
        md["expert_count"], md["expert_used_count"] = _experts(cfg)
    return md


def _experts(cfg: dict) -> tuple:
    """(num_local_experts, num_experts_per_tok) of a Mixtral config.json."""
    n, k = cfg.get("num_local_experts"), cfg.get("num_experts_per_tok")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, k)) or not 0 < k <= n:
        raise ConvertError(f"config.json num_experts_per_tok {k!r} must be an integer in 1..num_local_experts {n!r}")
    return n, k


def hf_tensors(cfg: dict, c: Config) -> dict:
    """Q/K rows permuted from rotate-half to adjacent pairs (normal RoPE, see the module docstring)."""
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise UnsupportedError("llama checkpoints with attention_bias or mlp_bias are not supported")
    return decoder_tensors(c, vocab(cfg), moe_layer(c) if c.n_expert else llama_layer(c),
                           {"attn_q.weight": permute_rope(c.n_head), "attn_k.weight": permute_rope(c.n_head_kv)})
