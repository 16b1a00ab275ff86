"""falcon (Falcon 7B / 40B style): LayerNorm with biases, fused QKV with multi-query or grouped-query attention,
neox RoPE, exact-GELU MLP, parallel attention and MLP: x + attn(attn_norm(x)) + mlp(attn_norm(x)) (7B: one norm)
or, in the new_decoder_architecture (40B), two norms named as llama.cpp's converter names them:
x + attn(attn_norm_2(x)) + mlp(attn_norm(x)) (HF ln_attn -> attn_norm_2, ln_mlp -> attn_norm); output tied or not.

Hugging Face groups the fused query_key_value rows per KV head (n_head_kv, n_head/n_head_kv + 2, head_dim) in
the new decoder architecture; the GGUF file holds them as llama.cpp's converter writes them: all Q rows, then K,
then V (the 7B multi-query layout, already in that order)."""

from ..errors import UnsupportedError
from .base import DecoderConfig
from .hf import classic_tensors, decoder_metadata, number, qkv_rows, rope_params, vocab

LAYER_TENSORS = ("attn_qkv.weight",)


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "falcon", rope_neox=True, activation="gelu", parallel_residual=True)

    def layer_norms(self, w, p: str) -> tuple:
        """7B: attn_norm feeds attention and MLP (no MLP norm); 40B: attn_norm_2 feeds attention, attn_norm the MLP."""
        norm, norm_2 = (w.norm(p + name, self.n_embd, self.norm_eps, name == "attn_norm")
                        for name in ("attn_norm", "attn_norm_2"))
        return (norm, None) if norm_2 is None else (norm_2, norm)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("FalconForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("alibi") or not cfg.get("parallel_attn", True) or cfg.get("activation", "gelu") != "gelu":
        raise UnsupportedError("falcon checkpoints need rotary positions (alibi false), parallel_attn and GELU")
    new = bool(cfg.get("new_decoder_architecture"))
    if new and cfg.get("num_ln_in_parallel_attn", 2) != 2:
        raise UnsupportedError("falcon new_decoder_architecture checkpoints need num_ln_in_parallel_attn 2")
    n_head = cfg.get("num_attention_heads")
    n_kv = (cfg.get("num_kv_heads") or n_head) if new else (1 if cfg.get("multi_query", True) else n_head)
    if not new and n_kv != 1:
        raise UnsupportedError("falcon checkpoints need multi_query or new_decoder_architecture")
    hidden = cfg.get("hidden_size")
    n_ff = cfg.get("ffn_hidden_size") or (4 * hidden if isinstance(hidden, int) else None)
    named = {"hidden_size": hidden, "num_attention_heads": n_head, "num_key_value_heads": n_kv,
             "num_hidden_layers": cfg.get("num_hidden_layers"), "intermediate_size": n_ff,
             "max_position_embeddings": cfg.get("max_position_embeddings", 2048)}
    return decoder_metadata(named, rope_params(cfg), number(cfg, "layer_norm_epsilon", 1e-5))


def hf_tensors(cfg: dict, c: Config) -> dict:
    """new_decoder_architecture: two norms (ln_attn -> attn_norm_2, ln_mlp -> attn_norm), QKV rows regrouped."""
    new = bool(cfg.get("new_decoder_architecture"))
    (n_vocab, tied), e, ff = vocab(cfg, tied_default=True), c.n_embd, c.n_ff
    n_qkv = (c.n_head + 2 * c.n_head_kv) * c.head_dim
    norms = (("ln_attn", "attn_norm_2"), ("ln_mlp", "attn_norm")) if new else (("input_layernorm", "attn_norm"),)
    layer = {f"{hf}.{p}": (f"{gg}.{p}", (e,)) for hf, gg in norms for p in ("weight", "bias")}
    layer |= {"self_attention.query_key_value.weight": ("attn_qkv.weight", (n_qkv, e)),
              "self_attention.dense.weight": ("attn_output.weight", (e, e)),
              "mlp.dense_h_to_4h.weight": ("ffn_up.weight", (ff, e)),
              "mlp.dense_4h_to_h.weight": ("ffn_down.weight", (e, ff))}
    if cfg.get("bias"):
        layer |= {"self_attention.query_key_value.bias": ("attn_qkv.bias", (n_qkv,)),
                  "self_attention.dense.bias": ("attn_output.bias", (e,)),
                  "mlp.dense_h_to_4h.bias": ("ffn_up.bias", (ff,)), "mlp.dense_4h_to_h.bias": ("ffn_down.bias", (e,))}
    top = {"transformer.word_embeddings.weight": ("token_embd.weight", (n_vocab, e)),
           "transformer.ln_f.weight": ("output_norm.weight", (e,)),
           "transformer.ln_f.bias": ("output_norm.bias", (e,))}
    if not tied:
        top["lm_head.weight"] = ("output.weight", (n_vocab, e))
    qkv = qkv_rows(c.n_head_kv, c.n_head) if new else None
    return classic_tensors(top, "transformer.h", c.n_layer, layer, {"attn_qkv.weight": qkv, "attn_qkv.bias": qkv})
