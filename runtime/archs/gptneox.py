"""gptneox (Pythia, Dolly v2): LayerNorm with biases, fused QKV, partial neox RoPE, exact-GELU MLP with
biases, parallel residual (x + attn(ln1(x)) + mlp(ln2(x))), untied output.

Hugging Face interleaves the fused query_key_value rows per head (n_head, 3, head_dim); the GGUF file holds
them as llama.cpp's converter writes them: all Q rows, then K, then V (what llama.cpp's graph views)."""

from ..errors import UnsupportedError
from ..gguf import meta
from .base import DecoderConfig
from .hf import ROPE, classic_tensors, decoder_metadata, number, qkv_rows, rope_params, table, vocab, with_biases

LAYER_TENSORS = ("attn_qkv.weight",)


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "gptneox", rope_neox=True, activation="gelu",
                                  parallel_residual=meta(md, "gptneox.use_parallel_residual", bool, True))


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("GPTNeoXForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("attention_bias", True):
        raise UnsupportedError("gpt_neox checkpoints need hidden_act 'gelu' and attention_bias")
    params = rope_params(cfg)
    rotary_pct = number(table(cfg, "rope_parameters"), "partial_rotary_factor",
                        number(cfg, "rotary_pct", 1.0, hi=1.0), hi=1.0, where=ROPE)
    md = decoder_metadata(cfg, params | {"rope_theta": params.get("rope_theta", cfg.get("rotary_emb_base", 10000.0))},
                          number(cfg, "layer_norm_eps", 1e-5))
    md["rope.dimension_count"] = int(md["rope.dimension_count"] * rotary_pct)  # of head_dim
    return md | {"use_parallel_residual": bool(cfg.get("use_parallel_residual", True))}


def hf_tensors(cfg: dict, c: Config) -> dict:
    e, ff = c.n_embd, c.n_ff
    n_vocab = vocab(cfg)[0]
    layer = with_biases((("input_layernorm", "attn_norm", (e,)), ("attention.query_key_value", "attn_qkv", (3 * e, e)),
                         ("attention.dense", "attn_output", (e, e)), ("post_attention_layernorm", "ffn_norm", (e,)),
                         ("mlp.dense_h_to_4h", "ffn_up", (ff, e)), ("mlp.dense_4h_to_h", "ffn_down", (e, ff))))
    top = with_biases((("gpt_neox.final_layer_norm", "output_norm", (e,)),))
    top |= {"gpt_neox.embed_in.weight": ("token_embd.weight", (n_vocab, e)),
            "embed_out.weight": ("output.weight", (n_vocab, e))}
    qkv = qkv_rows(c.n_head, c.n_head)
    return classic_tensors(top, "gpt_neox.layers", c.n_layer, layer, {"attn_qkv.weight": qkv, "attn_qkv.bias": qkv})
