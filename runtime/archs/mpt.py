"""mpt (MosaicML MPT): ALiBi position bias (no RoPE, no position embeddings), LayerNorm without bias, fused QKV
(rows Q, K, V; optionally clipped to +-clip_qkv: llama.cpp's attention.clamp_kqv), exact-GELU MLP, no linear
biases, sequential residual, output tied to token_embd."""

from dataclasses import dataclass

from ..errors import UnsupportedError
from .base import DecoderConfig, meta
from .hf import classic_tensors, dims

LAYER_TENSORS = ("attn_qkv.weight",)


@dataclass(frozen=True)
class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "mpt", activation="gelu", use_rope=False,
                        alibi_max_bias=meta(md, "mpt.attention.max_alibi_bias", kind=float),
                        clamp_kqv=meta(md, "mpt.attention.clamp_kqv", 0.0, float))


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("MptForCausalLM", "MPTForCausalLM")


def _dims(cfg: dict):
    attn = cfg.get("attn_config") or {}
    if (not attn.get("alibi", True) or attn.get("qk_ln") or attn.get("softmax_scale")
            or not cfg.get("no_bias", True) or attn.get("alibi_bias_max", 8) != 8
            or cfg.get("expansion_ratio", 4) != 4):  # transformers' MPT builds 4 * d_model MLPs and max bias 8
        raise UnsupportedError("mpt checkpoints need alibi (alibi_bias_max 8), no_bias, expansion_ratio 4 and no "
                               "qk_ln or softmax_scale")
    d_model = cfg.get("d_model")
    return dims({"hidden_size": d_model, "num_attention_heads": cfg.get("n_heads"),
                 "num_hidden_layers": cfg.get("n_layers"), "vocab_size": cfg.get("vocab_size"),
                 "intermediate_size": 4 * d_model if isinstance(d_model, int) else None,
                 "tie_word_embeddings": True})


def hf_metadata(cfg: dict) -> dict:
    d = _dims(cfg)
    return {"context_length": int(cfg.get("max_seq_len", 2048)), "embedding_length": d.n_embd,
            "block_count": d.n_layer, "feed_forward_length": d.n_ff, "attention.head_count": d.n_head,
            "attention.layer_norm_epsilon": float(cfg.get("layer_norm_epsilon", 1e-5)),
            "attention.max_alibi_bias": 8.0} | _clamp(cfg)


def _clamp(cfg: dict) -> dict:
    clip = (cfg.get("attn_config") or {}).get("clip_qkv")
    return {"attention.clamp_kqv": float(clip)} if clip else {}


def hf_tensors(cfg: dict) -> dict:
    d = _dims(cfg)
    e, ff = d.n_embd, d.n_ff
    layer = {"norm_1.weight": ("attn_norm.weight", (e,)), "attn.Wqkv.weight": ("attn_qkv.weight", (3 * e, e)),
             "attn.out_proj.weight": ("attn_output.weight", (e, e)), "norm_2.weight": ("ffn_norm.weight", (e,)),
             "ffn.up_proj.weight": ("ffn_up.weight", (ff, e)), "ffn.down_proj.weight": ("ffn_down.weight", (e, ff))}
    top = {"transformer.wte.weight": ("token_embd.weight", (d.n_vocab, e)),
           "transformer.norm_f.weight": ("output_norm.weight", (e,))}
    return classic_tensors(top, "transformer.blocks", d.n_layer, layer)
