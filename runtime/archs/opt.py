"""opt (Meta OPT, pre-LayerNorm checkpoints: 125m, 1.3b and up): learned absolute position embeddings,
LayerNorm with biases, separate Q/K/V with biases, ReLU MLP with biases, sequential residual, output tied to
token_embd.

llama.cpp has no OPT architecture: `opt` is llamba's own GGUF name, with the common `{arch}.*` keys,
`attention.layer_norm_epsilon` and gpt2's tensor names (`position_embd`, `attn_q/k/v`, `ffn_up/down`).
OPT looks position p up in row p + 2 of its embed_positions (a padding offset): the converter drops those two
rows, so position_embd row p is position p as for gpt2."""

from ..errors import UnsupportedError
from .base import LearnedPositions
from .hf import HFTensor, classic_tensors, decoder_metadata, vocab, with_biases

LAYER_TENSORS = ()
POSITION_OFFSET = 2


class Config(LearnedPositions):
    @classmethod
    def from_metadata(cls, md: dict) -> "Config":
        return cls.read_layernorm(md, "opt", activation="relu", use_rope=False)


# --- Hugging Face -> GGUF mapping (used by runtime/convert/; interface in archs/hf.py) ---
HF_ARCHITECTURES = ("OPTForCausalLM",)


def hf_metadata(cfg: dict) -> dict:
    hidden = cfg.get("hidden_size")
    if not cfg.get("do_layer_norm_before", True) or cfg.get("_remove_final_layer_norm"):
        raise UnsupportedError("OPT checkpoints with post-LayerNorm blocks (do_layer_norm_before false, e.g. "
                               "opt-350m) are not supported")
    if (cfg.get("word_embed_proj_dim") or hidden) != hidden:
        raise UnsupportedError(f"OPT word_embed_proj_dim {cfg.get('word_embed_proj_dim')} != hidden_size {hidden} "
                               "(project_in/project_out) is not supported")
    if (cfg.get("activation_function", "relu") != "relu" or not cfg.get("enable_bias", True)
            or not cfg.get("layer_norm_elementwise_affine", True) or not cfg.get("tie_word_embeddings", True)):
        raise UnsupportedError("OPT checkpoints need activation_function relu, enable_bias, affine LayerNorms and "
                               "tie_word_embeddings")
    named = {"hidden_size": hidden, "num_attention_heads": cfg.get("num_attention_heads"),
             "num_hidden_layers": cfg.get("num_hidden_layers"), "intermediate_size": cfg.get("ffn_dim"),
             "max_position_embeddings": cfg.get("max_position_embeddings", 2048)}
    return decoder_metadata(named, layer_norm_eps=1e-5)  # torch.nn.LayerNorm's default epsilon, which OPT uses


def _drop_offset(w):
    return w[POSITION_OFFSET:]


def hf_tensors(cfg: dict, c: Config) -> dict:
    """OPT looks position p up in row p + 2 of embed_positions: the converter drops those two rows."""
    e, ff, n_pos = c.n_embd, c.n_ff, c.context_length
    layer = with_biases((("self_attn_layer_norm", "attn_norm", (e,)), ("self_attn.q_proj", "attn_q", (e, e)),
                         ("self_attn.k_proj", "attn_k", (e, e)), ("self_attn.v_proj", "attn_v", (e, e)),
                         ("self_attn.out_proj", "attn_output", (e, e)), ("final_layer_norm", "ffn_norm", (e,)),
                         ("fc1", "ffn_up", (ff, e)), ("fc2", "ffn_down", (e, ff))))
    top = with_biases((("model.decoder.final_layer_norm", "output_norm", (e,)),))
    top["model.decoder.embed_tokens.weight"] = ("token_embd.weight", (vocab(cfg)[0], e))
    out = classic_tensors(top, "model.decoder.layers", c.n_layer, layer)
    out["model.decoder.embed_positions.weight"] = HFTensor("position_embd.weight", (n_pos + POSITION_OFFSET, e),
                                                           _drop_offset, out_shape=(n_pos, e))
    return out
