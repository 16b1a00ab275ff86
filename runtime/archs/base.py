"""The hyperparameter record every architecture reads from GGUF metadata, and the hooks where an architecture
differs from the generic pre-norm decoder.

An architecture's `Config` subclasses DecoderConfig: its `from_metadata` reads the common `{arch}.*` keys with
its own defaults and flags, and it overrides a hook where its model is built differently:
  embedding(w, n_ctx)    token embedding (+ learned positions, a norm)        default: token_embd * embd_scale
  output(w, tok_embd)    output matrix and bias                                default: `output`, else tied, no bias
  layer_norms(w, p)      (attention norm, MLP norm) of block p                 default: attn_norm, ffn_norm
  layer_window(il)       sliding-window size of layer il                       default: sliding_window
  layer_rope(il)         (freq_base, RopeScaling) of layer il                  default: rope_base, rope_scaling
`w` is the loader's model.Weights (checked access to the file's tensors).
"""

import math
from dataclasses import dataclass, replace

from ..errors import GGUFError, LlambaError, UnsupportedError
from ..gguf import meta
from ..layers import Embedding


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling as llama.cpp applies it: 'linear' (positions / factor) or 'yarn'."""
    kind: str
    factor: float
    original_context: int = 0  # yarn: training context before scaling
    attn_factor: float = 1.0  # yarn: extra magnitude scale of cos/sin
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    @classmethod
    def from_metadata(cls, md: dict, arch: str) -> "RopeScaling | None":
        p = f"{arch}.rope.scaling."
        kind = meta(md, p + "type", str, "none")
        factor = meta(md, p + "factor", float, 1.0)
        if kind == "none" and f"{arch}.rope.scale_linear" in md:  # older files
            kind, factor = "linear", meta(md, f"{arch}.rope.scale_linear", float)
        if kind == "none" or factor == 1.0:
            return None
        if kind not in ("linear", "yarn"):
            raise UnsupportedError(f"RoPE scaling type {kind!r} is not supported (supported: none, linear, yarn)")
        if not 0 < factor < math.inf:
            raise GGUFError(f"{p}factor must be positive and finite, got {factor}")
        original = meta(md, p + "original_context_length", int, 0)
        if kind == "yarn" and original <= 0:
            raise GGUFError(f"yarn RoPE scaling needs {p}original_context_length > 0")
        extra = [meta(md, p + key, float, default) for key, default in
                 (("attn_factor", 1.0), ("yarn_beta_fast", 32.0), ("yarn_beta_slow", 1.0))]
        if not all(map(math.isfinite, extra)):
            raise GGUFError(f"{p}attn_factor and yarn_beta_* must be finite, got {extra}")
        return cls(kind, factor, original, *extra)


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of a pre-norm decoder-only transformer, read from `{arch}.*` metadata."""
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    context_length: int
    norm_eps: float
    n_rot: int  # rotary dimensions per head (<= head_dim: partial rotary)
    rope_base: float
    rope_scaling: RopeScaling | None = None
    rope_neox: bool = False  # pairs (i, i + n_rot/2) instead of adjacent (2i, 2i+1)
    activation: str = "silu"  # of the gated MLP: see layers.ACTIVATIONS
    embd_scale: float = 1.0  # token embeddings are multiplied by this
    attn_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    sliding_window: int = 0  # 0: every layer attends to the whole context
    final_logit_softcap: float = 0.0  # 0: off; else logits = cap * tanh(logits / cap)
    n_expert: int = 0  # 0: dense feed-forward; else a mixture of n_expert experts (n_ff each)
    n_expert_used: int = 0  # experts routed to per token
    norm_rms: bool = True  # False: LayerNorm (mean subtracted, with bias) everywhere
    parallel_residual: bool = False  # GPT-NeoX: x + attn(attn_norm(x)) + mlp(ffn_norm(x))
    use_rope: bool = True  # False: learned absolute position embeddings (`position_embd`) instead
    alibi_max_bias: float = 0.0  # > 0 (with use_rope False): ALiBi slopes instead of position embeddings
    clamp_kqv: float = 0.0  # > 0 (MPT clip_qkv): Q, K and V clipped to [-clamp_kqv, clamp_kqv]

    @classmethod
    def read(cls, md: dict, arch: str, **overrides):
        """The common `{arch}.*` keys; keyword arguments override or add arch-specific fields."""
        p = arch + "."
        n_embd = meta(md, p + "embedding_length", int)
        n_head = meta(md, p + "attention.head_count", int)
        n_head_kv = meta(md, p + "attention.head_count_kv", int, n_head)
        if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
            raise GGUFError(f"attention.head_count {n_head} is not a positive multiple of head_count_kv {n_head_kv}")
        head_dim = meta(md, p + "attention.key_length", int, n_embd // n_head)
        if meta(md, p + "attention.value_length", int, head_dim) != head_dim:
            raise UnsupportedError("attention.value_length different from key_length is not supported")
        fields = dict(
            arch=arch, n_embd=n_embd, n_layer=meta(md, p + "block_count", int), n_head=n_head,
            n_head_kv=n_head_kv, head_dim=head_dim, n_ff=meta(md, p + "feed_forward_length", int),
            context_length=meta(md, p + "context_length", int),
            norm_eps=meta(md, p + "attention.layer_norm_rms_epsilon", float, 1e-5),
            n_rot=meta(md, p + "rope.dimension_count", int, head_dim),
            rope_base=meta(md, p + "rope.freq_base", float, 10000.0),
            rope_scaling=RopeScaling.from_metadata(md, arch),
            sliding_window=meta(md, p + "attention.sliding_window", int, 0),
            final_logit_softcap=meta(md, p + "final_logit_softcapping", float, 0.0),
            n_expert=meta(md, p + "expert_count", int, 0), n_expert_used=meta(md, p + "expert_used_count", int, 0),
        )
        fields.update(overrides)
        config = cls(**fields)
        config.validate()
        return config

    @classmethod
    def read_layernorm(cls, md: dict, arch: str, **overrides):
        """read() for the LayerNorm architectures (GPT-2 lineage): eps from `{arch}.attention.layer_norm_epsilon`."""
        return cls.read(md, arch, norm_rms=False, norm_eps=meta(md, f"{arch}.attention.layer_norm_epsilon", float),
                        **overrides)

    def validate(self):
        for name in ("n_embd", "n_layer", "head_dim", "n_ff", "context_length"):
            if getattr(self, name) <= 0:
                raise GGUFError(f"{self.arch}: {name} must be positive, got {getattr(self, name)}")
        if self.use_rope and (not 0 < self.n_rot <= self.head_dim or self.n_rot % 2):
            raise GGUFError(f"{self.arch}: rope.dimension_count {self.n_rot} must be even and <= {self.head_dim}")
        if self.sliding_window < 0:
            raise GGUFError(f"{self.arch}: attention.sliding_window must be >= 0, got {self.sliding_window}")
        for name, low in (("norm_eps", 0.0), ("final_logit_softcap", 0.0), ("attn_scale", 0.0), ("clamp_kqv", 0.0),
                          ("alibi_max_bias", 0.0), ("embd_scale", -math.inf)):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= low):
                raise GGUFError(f"{self.arch}: {name} must be finite{f' and >= {low:g}' if low == 0 else ''}, "
                                f"got {value}")
        if self.use_rope and not 0 < self.rope_base < math.inf:
            raise GGUFError(f"{self.arch}: rope.freq_base must be positive and finite, got {self.rope_base}")
        if self.n_expert and not 0 < self.n_expert_used <= self.n_expert:
            raise GGUFError(f"{self.arch}: expert_used_count {self.n_expert_used} must lie in 1..expert_count "
                            f"{self.n_expert}")

    @property
    def scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def embedding(self, w, n_ctx: int) -> Embedding:
        """The token embedding (token_embd), scaled by embd_scale."""
        return Embedding(w.matrix("token_embd.weight", None, self.n_embd), self.embd_scale)

    def output(self, w, tok_embd) -> tuple:
        """(output matrix (n_vocab, n_embd), bias (n_vocab,) or None): `output`, or tied to token_embd."""
        return w.matrix("output.weight", tok_embd.n_rows, self.n_embd, False) or tok_embd, None

    def layer_norms(self, w, p: str) -> tuple:
        """(norm before attention, norm before the MLP) of block p ('blk.N.'); an MLP norm of None (a parallel
        block) makes the MLP read the attention norm's output."""
        return w.norm(p + "attn_norm", self.n_embd, self.norm_eps), w.norm(p + "ffn_norm", self.n_embd, self.norm_eps)

    def layer_window(self, il: int) -> int:
        """Sliding-window size of layer il (0: global attention)."""
        return self.sliding_window

    def layer_rope(self, il: int) -> tuple:
        """(freq_base, RopeScaling | None) of layer il."""
        return self.rope_base, self.rope_scaling



class LearnedPositions(DecoderConfig):
    """A decoder with learned absolute position embeddings (`position_embd`, row p is position p) in place of RoPE:
    gpt2 and opt subclass it."""

    def embedding(self, w, n_ctx: int) -> Embedding:
        pos = w.matrix("position_embd.weight", None, self.n_embd)  # (n_pos, n_embd)
        if pos.n_rows < n_ctx:
            raise LlambaError(f"n_ctx {n_ctx} exceeds the {pos.n_rows} learned positions of position_embd")
        return replace(super().embedding(w, n_ctx), pos=pos)
