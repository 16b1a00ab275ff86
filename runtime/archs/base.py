"""The generic decoder-only transformer configuration every architecture fills from GGUF metadata.

An architecture module subclasses DecoderConfig (its own dataclass, its own defaults and metadata
keys) and overrides the per-layer hooks (`layer_window`, `layer_rope`) where layers differ.
"""

import math
from dataclasses import dataclass

from ..errors import GGUFError, UnsupportedError

_REQUIRED = object()


def meta(md: dict, key: str, default=_REQUIRED, kind=None):
    """md[key] checked against kind (int/float/str/bool); a missing required key raises GGUFError."""
    if key not in md:
        if default is _REQUIRED:
            raise GGUFError(f"GGUF metadata has no {key!r}, which this architecture needs")
        return default
    v = md[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if kind is not None and not isinstance(v, kind):
        raise GGUFError(f"GGUF metadata {key!r} = {v!r} is not a {kind.__name__}")
    return v


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
        kind = meta(md, p + "type", "none", str)
        factor = meta(md, p + "factor", 1.0, float)
        if kind == "none" and f"{arch}.rope.scale_linear" in md:  # older files
            kind, factor = "linear", meta(md, f"{arch}.rope.scale_linear", kind=float)
        if kind == "none" or factor == 1.0:
            return None
        if kind not in ("linear", "yarn"):
            raise UnsupportedError(f"RoPE scaling type {kind!r} is not supported (supported: none, linear, yarn)")
        if not factor > 0:
            raise GGUFError(f"{p}factor must be positive, got {factor}")
        original = meta(md, p + "original_context_length", 0, int)
        if kind == "yarn" and original <= 0:
            raise GGUFError(f"yarn RoPE scaling needs {p}original_context_length > 0")
        return cls(kind, factor, original,
                   meta(md, p + "attn_factor", 1.0, float),
                   meta(md, p + "yarn_beta_fast", 32.0, float), meta(md, p + "yarn_beta_slow", 1.0, float))


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
        n_embd = meta(md, p + "embedding_length", kind=int)
        n_head = meta(md, p + "attention.head_count", kind=int)
        n_head_kv = meta(md, p + "attention.head_count_kv", n_head, int)
        if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
            raise GGUFError(f"attention.head_count {n_head} is not a positive multiple of head_count_kv {n_head_kv}")
        head_dim = meta(md, p + "attention.key_length", n_embd // n_head, int)
        if meta(md, p + "attention.value_length", head_dim, int) != head_dim:
            raise UnsupportedError("attention.value_length different from key_length is not supported")
        fields = dict(
            arch=arch, n_embd=n_embd, n_layer=meta(md, p + "block_count", kind=int), n_head=n_head,
            n_head_kv=n_head_kv, head_dim=head_dim, n_ff=meta(md, p + "feed_forward_length", kind=int),
            context_length=meta(md, p + "context_length", kind=int),
            norm_eps=meta(md, p + "attention.layer_norm_rms_epsilon", 1e-5, float),
            n_rot=meta(md, p + "rope.dimension_count", head_dim, int),
            rope_base=meta(md, p + "rope.freq_base", 10000.0, float),
            rope_scaling=RopeScaling.from_metadata(md, arch),
            sliding_window=meta(md, p + "attention.sliding_window", 0, int),
            final_logit_softcap=meta(md, p + "final_logit_softcapping", 0.0, float),
            n_expert=meta(md, p + "expert_count", 0, int), n_expert_used=meta(md, p + "expert_used_count", 0, int),
        )
        fields.update(overrides)
        config = cls(**fields)
        config.validate()
        return config

    @classmethod
    def read_layernorm(cls, md: dict, arch: str, **overrides):
        """read() for the LayerNorm architectures (GPT-2 lineage): eps from `{arch}.attention.layer_norm_epsilon`."""
        return cls.read(md, arch, norm_rms=False, norm_eps=meta(md, f"{arch}.attention.layer_norm_epsilon", kind=float),
                        **overrides)

    def validate(self):
        for name in ("n_embd", "n_layer", "head_dim", "n_ff", "context_length"):
            if getattr(self, name) <= 0:
                raise GGUFError(f"{self.arch}: {name} must be positive, got {getattr(self, name)}")
        if self.use_rope and (not 0 < self.n_rot <= self.head_dim or self.n_rot % 2):
            raise GGUFError(f"{self.arch}: rope.dimension_count {self.n_rot} must be even and <= {self.head_dim}")
        if self.sliding_window < 0:
            raise GGUFError(f"{self.arch}: attention.sliding_window must be >= 0, got {self.sliding_window}")
        if self.n_expert and not 0 < self.n_expert_used <= self.n_expert:
            raise GGUFError(f"{self.arch}: expert_used_count {self.n_expert_used} must lie in 1..expert_count "
                            f"{self.n_expert}")

    @property
    def scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def layer_window(self, il: int) -> int:
        """Sliding-window size of layer il (0: global attention)."""
        return self.sliding_window

    def layer_rope(self, il: int) -> tuple:
        """(freq_base, RopeScaling | None) of layer il."""
        return self.rope_base, self.rope_scaling
