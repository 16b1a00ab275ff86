"""phi2 (Phi-1.5, Phi-2): one LayerNorm with biases feeding attention and MLP in parallel
(x + attn(ln(x)) + mlp(ln(x))), separate Q/K/V with biases, partial neox RoPE, GELU-tanh MLP with biases,
untied output with a bias (`output.bias`)."""

from ..errors import UnsupportedError
from .base import DecoderConfig
from .hf import ROPE, classic_tensors, decoder_metadata, number, rope_params, vocab, with_biases

LAYER_TENSORS = ()


class Config(DecoderConfig):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "phi2", rope_neox=True, activation="gelu_tanh", parallel_residual=True)

    def layer_norms(self, w, p: str) -> tuple:
        """One LayerNorm feeds attention and MLP."""
        return w.norm(p + "attn_norm", self.n_embd, self.norm_eps), None

    def output(self, w, tok_embd) -> tuple:
        """Untied, with a bias."""
        n_vocab = tok_embd.n_rows
        return w.matrix("output.weight", n_vocab, self.n_embd), w.vector("output.bias", n_vocab)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("PhiForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    if cfg.get("hidden_act", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh") or cfg.get("qk_layernorm"):
        raise UnsupportedError("phi checkpoints need hidden_act gelu_new and no qk_layernorm")
    params = rope_params(cfg)
    factor = number(params, "partial_rotary_factor", number(cfg, "partial_rotary_factor", 0.5, hi=1.0), hi=1.0,
                    where=ROPE)
    md = decoder_metadata(cfg, params, number(cfg, "layer_norm_eps", 1e-5))
    md["rope.dimension_count"] = int(md["rope.dimension_count"] * factor)  # of head_dim
    return md


def hf_tensors(cfg: dict, c: Config) -> dict:
    e, ff, q, kv = c.n_embd, c.n_ff, c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    n_vocab, _ = vocab(cfg)  # untied whatever tie_word_embeddings says
    layer = with_biases((("input_layernorm", "attn_norm", (e,)), ("self_attn.q_proj", "attn_q", (q, e)),
                         ("self_attn.k_proj", "attn_k", (kv, e)), ("self_attn.v_proj", "attn_v", (kv, e)),
                         ("self_attn.dense", "attn_output", (e, q)), ("mlp.fc1", "ffn_up", (ff, e)),
                         ("mlp.fc2", "ffn_down", (e, ff))))
    top = with_biases((("model.final_layernorm", "output_norm", (e,)), ("lm_head", "output", (n_vocab, e))))
    top["model.embed_tokens.weight"] = ("token_embd.weight", (n_vocab, e))
    return classic_tensors(top, "model.layers", c.n_layer, layer)
