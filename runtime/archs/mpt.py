"""mpt (MosaicML MPT): ALiBi position bias (no RoPE, no position embeddings), LayerNorm without bias, fused QKV
(rows Q, K, V; optionally clipped to +-clip_qkv: llama.cpp's attention.clamp_kqv), exact-GELU MLP, no linear
biases, sequential residual, output tied to token_embd."""

from ..errors import UnsupportedError
from ..gguf import meta
from .base import DecoderConfig
from .hf import classic_tensors, decoder_metadata, number, table, vocab

LAYER_TENSORS = ("attn_qkv.weight",)


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "mpt", activation="gelu", use_rope=False,
                                  alibi_max_bias=meta(md, "mpt.attention.max_alibi_bias", float),
                                  clamp_kqv=meta(md, "mpt.attention.clamp_kqv", float, 0.0))


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("MptForCausalLM", "MPTForCausalLM")


def hf_metadata(cfg: dict) -> dict:
    attn = table(cfg, "attn_config")
    if (not attn.get("alibi", True) or attn.get("qk_ln") or attn.get("softmax_scale")
            or not cfg.get("no_bias", True) or attn.get("alibi_bias_max", 8) != 8
            or cfg.get("expansion_ratio", 4) != 4):  # transformers' MPT builds 4 * d_model MLPs and max bias 8
        raise UnsupportedError("mpt checkpoints need alibi (alibi_bias_max 8), no_bias, expansion_ratio 4 and no "
                               "qk_ln or softmax_scale")
    d_model = cfg.get("d_model")
    named = {"hidden_size": d_model, "num_attention_heads": cfg.get("n_heads"),
             "num_hidden_layers": cfg.get("n_layers"), "max_position_embeddings": cfg.get("max_seq_len", 2048),
             "intermediate_size": 4 * d_model if isinstance(d_model, int) else None}
    md = decoder_metadata(named, layer_norm_eps=number(cfg, "layer_norm_epsilon", 1e-5))
    md["attention.max_alibi_bias"] = 8.0
    if attn.get("clip_qkv"):
        md["attention.clamp_kqv"] = number(attn, "clip_qkv", where="config.json attn_config")
    return md


def hf_tensors(cfg: dict, c: Config) -> dict:
    e, ff = c.n_embd, c.n_ff
    layer = {"norm_1.weight": ("attn_norm.weight", (e,)), "attn.Wqkv.weight": ("attn_qkv.weight", (3 * e, e)),
             "attn.out_proj.weight": ("attn_output.weight", (e, e)), "norm_2.weight": ("ffn_norm.weight", (e,)),
             "ffn.up_proj.weight": ("ffn_up.weight", (ff, e)), "ffn.down_proj.weight": ("ffn_down.weight", (e, ff))}
    top = {"transformer.wte.weight": ("token_embd.weight", (vocab(cfg)[0], e)),
           "transformer.norm_f.weight": ("output_norm.weight", (e,))}
    return classic_tensors(top, "transformer.blocks", c.n_layer, layer)
