"""gpt2 (GPT-2, Cerebras-GPT): learned absolute position embeddings instead of RoPE, LayerNorm with biases,
fused QKV (rows Q, K, V), GELU-tanh MLP with biases, sequential residual, output tied to token_embd.

Hugging Face's Conv1D layers store weights (n_in, n_out): the converter transposes them."""

from ..errors import UnsupportedError
from .base import LearnedPositions
from .hf import classic_tensors, decoder_metadata, number, transpose, vocab, with_biases

LAYER_TENSORS = ("attn_qkv.weight",)


class Config(LearnedPositions):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "gpt2", activation="gelu_tanh", use_rope=False)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("GPT2LMHeadModel",)


def hf_metadata(cfg: dict) -> dict:
    if (cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh")
            or not cfg.get("tie_word_embeddings", True) or cfg.get("scale_attn_by_inverse_layer_idx")
            or not cfg.get("scale_attn_weights", True) or cfg.get("add_cross_attention")):
        raise UnsupportedError("gpt2 checkpoints need activation_function gelu_new, tied embeddings, "
                               "scale_attn_weights and no scale_attn_by_inverse_layer_idx or cross-attention")
    n_embd = cfg.get("n_embd")
    named = {"hidden_size": n_embd, "num_attention_heads": cfg.get("n_head"), "num_hidden_layers": cfg.get("n_layer"),
             "intermediate_size": cfg.get("n_inner") or (4 * n_embd if isinstance(n_embd, int) else None),
             "max_position_embeddings": cfg.get("n_positions", 1024)}
    return decoder_metadata(named, layer_norm_eps=number(cfg, "layer_norm_epsilon", 1e-5))


def hf_tensors(cfg: dict, c: Config) -> dict:
    e, ff = c.n_embd, c.n_ff
    layer = {"ln_1.weight": ("attn_norm.weight", (e,)), "ln_1.bias": ("attn_norm.bias", (e,)),
             "attn.c_attn.weight": ("attn_qkv.weight", (e, 3 * e)), "attn.c_attn.bias": ("attn_qkv.bias", (3 * e,)),
             "attn.c_proj.weight": ("attn_output.weight", (e, e)), "attn.c_proj.bias": ("attn_output.bias", (e,)),
             "ln_2.weight": ("ffn_norm.weight", (e,)), "ln_2.bias": ("ffn_norm.bias", (e,)),
             "mlp.c_fc.weight": ("ffn_up.weight", (e, ff)), "mlp.c_fc.bias": ("ffn_up.bias", (ff,)),
             "mlp.c_proj.weight": ("ffn_down.weight", (ff, e)), "mlp.c_proj.bias": ("ffn_down.bias", (e,))}
    top = with_biases((("transformer.ln_f", "output_norm", (e,)),))
    top |= {"transformer.wte.weight": ("token_embd.weight", (vocab(cfg)[0], e)),
            "transformer.wpe.weight": ("position_embd.weight", (c.context_length, e))}
    out = classic_tensors(top, "transformer.h", c.n_layer, layer)
    for hf, spec in out.items():
        if hf.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):  # Conv1D (n_in, n_out)
            out[hf] = type(spec)(spec.gguf, spec.shape, transpose, out_shape=spec.shape[::-1])
    return out
