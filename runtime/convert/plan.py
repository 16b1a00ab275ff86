"""Which GGML type each tensor gets for an output type or K-quant mix (shared by convert and quantize).

Plain types (`f16`, `q8_0`, `q4_k`, ...) put every quantizable tensor in that type ("pure" in
llama.cpp terms). The mixes (`q4_k_m`, `q4_k_s`, `q5_k_m`, `q3_k_m`, `iq4_nl`) follow llama.cpp's
`llama_tensor_get_type` (src/llama-quant.cpp): Q6_K (Q8_0 when rows are not a multiple of 256) for
`output` (or `token_embd` when tied), more bits for some `attn_v` / `ffn_down` layers chosen by
`use_more_bits`, Q4_K `attn_output` in q3_k_m, Q8_0 `attn_v`/`attn_k` with 8 experts; iq4_nl (without an
importance matrix): Q5_K `attn_v` when n_head / n_head_kv >= 4 and Q5_K `ffn_down` in the first eighth of the layers.
Everywhere, a row length that is not a multiple of the block size falls back as llama.cpp does:
Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, Q2_K/Q3_K->IQ4_NL, then F16.
Not quantized: 1-D tensors, `*_norm.weight`, MoE routers (`ffn_gate_inp`): F32.
"""

import re
from dataclasses import dataclass

from quant import GGMLType as T
from quant import type_info

from ..errors import ConvertError


@dataclass(frozen=True)
class Scheme:
    name: str
    default: T  # the type of a quantizable tensor before the mix rules
    file_type: int  # llama_ftype written as general.file_type
    mix: bool = False


SCHEMES = {s.name: s for s in [
    Scheme("f32", T.F32, 0), Scheme("f16", T.F16, 1), Scheme("bf16", T.BF16, 32),
    Scheme("q4_0", T.Q4_0, 2), Scheme("q4_1", T.Q4_1, 3), Scheme("q8_0", T.Q8_0, 7),
    Scheme("q5_0", T.Q5_0, 8), Scheme("q5_1", T.Q5_1, 9),
    Scheme("q2_k", T.Q2_K, 10), Scheme("q3_k", T.Q3_K, 11), Scheme("q4_k", T.Q4_K, 14),
    Scheme("q5_k", T.Q5_K, 16), Scheme("q6_k", T.Q6_K, 18),
    Scheme("q3_k_m", T.Q3_K, 12, True), Scheme("q4_k_s", T.Q4_K, 14, True),
    Scheme("q4_k_m", T.Q4_K, 15, True), Scheme("q5_k_m", T.Q5_K, 17, True), Scheme("iq4_nl", T.IQ4_NL, 25, True),
]}
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.Q2_K: T.IQ4_NL, T.Q3_K: T.IQ4_NL}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name.lower()]
    except KeyError:
        raise ConvertError(f"unknown output type {name!r}; choose from {', '.join(SCHEMES)}") from None


def quantizable(name: str, shape: tuple) -> bool:
    """llama.cpp quantizes 2-D and 3-D weights except norms, MoE routers and position embeddings."""
    return (len(shape) >= 2 and not name.endswith("_norm.weight") and "ffn_gate_inp" not in name
            and name not in ("position_embd.weight", "token_types.weight"))


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class TypeChooser:
    """choose(name, shape) -> (GGMLType, note or None), called once per tensor in file order.

    As in llama.cpp, the "layer" of an attn_v / ffn_down tensor is its rank among the attn_v / ffn_down
    tensors seen so far (file order), not the number in its name; they agree when blocks are written in
    numeric order, as convert does. Expert tensors (3-D, n_expert > 1) use the number in the name.
    n_gqa: query heads per K/V head (only iq4_nl's attn_v rule reads it)."""

    def __init__(self, s: Scheme, n_layer: int, has_output: bool, n_expert: int = 0, n_gqa: int = 1):
        self.s, self.n_layer, self.has_output, self.n_expert, self.n_gqa = s, n_layer, has_output, n_expert, n_gqa
        self.seen = {"attn_v": 0, "ffn_down": 0}

    def _rank(self, kind: str, name: str) -> int:
        i = self.seen[kind]
        self.seen[kind] += 1
        m = _LAYER.match(name)
        return int(m.group(1)) if self.n_expert > 1 and m else i

    def _mix(self, name: str, n_cols: int) -> T:
        ft, t, n = self.s.name, self.s.default, self.n_layer
        if name == "output.weight" or (not self.has_output and name == "token_embd.weight"):
            return T.Q8_0 if n_cols % 256 else T.Q6_K
        if "attn_v.weight" in name:
            i = self._rank("attn_v", name)
            if ft == "q3_k_m":
                t = T.Q5_K if i < 2 else T.Q4_K
            elif ft in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n):
                t = T.Q6_K
            elif ft == "q4_k_s" and i < 4:
                t = T.Q5_K
            elif ft == "iq4_nl" and self.n_gqa >= 4:
                t = T.Q5_K
            return T.Q8_0 if self.n_expert == 8 else t
        if "attn_k.weight" in name:
            return T.Q8_0 if self.n_expert == 8 else t
        if "ffn_down" in name:
            i = self._rank("ffn_down", name)
            if ft == "q3_k_m":
                return T.Q5_K if i < n // 16 else T.Q4_K
            if ft in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n):
                return T.Q6_K
            if ft in ("q4_k_s", "iq4_nl") and i < n // 8:
                return T.Q5_K
            return t
        if "attn_output.weight" in name:
            if self.n_expert == 8:
                return T.Q5_K if ft in ("q3_k_m", "q4_k_s", "q4_k_m", "iq4_nl") else t
            return T.Q4_K if ft == "q3_k_m" else t
        if "attn_qkv.weight" in name:
            return {"q3_k_m": T.Q4_K, "q4_k_m": T.Q5_K, "q5_k_m": T.Q6_K}.get(ft, t)
        return t

    def choose(self, name: str, shape: tuple):
        if not quantizable(name, shape):
            return T.F32, None
        n_cols = shape[-1]
        t = self._mix(name, n_cols) if self.s.mix else self.s.default
        if n_cols % type_info(t).block_size == 0 or t in FLOAT_TYPES:
            return t, None
        fb = _FALLBACK.get(t, T.F16)
        if n_cols % type_info(fb).block_size:
            fb = T.F16
        return fb, f"{t.name} -> {fb.name} (row length {n_cols} is not a multiple of {type_info(t).block_size})"
