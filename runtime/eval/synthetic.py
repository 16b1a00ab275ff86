"""Synthetic model files for speed workloads: a model's shape with random but finite weights.

No 7B GGUF is available offline, yet the 7B size decides whether generation reaches the memory bound. This
writes a Llama-shaped file (`SHAPES`: Llama-2-7B's 4096 wide, 32 layers, 32 heads, FFN 11008) in llama.cpp's
Q4_K_M mix (runtime/convert/plan.py's rules: Q4_K, Q6_K for half the attn_v / ffn_down and the output), with the
vocabulary and tokenizer metadata of a real GGUF (so both engines load and tokenize it). The blocks are random
bytes whose fp16 scale fields (quant.blocks.FLOAT_FIELDS) are then set to small finite values, sized so that a
weight's magnitude is ~1/sqrt(width): activations stay finite through every layer. The weights are random: a
speed workload, not a model; its output is noise.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant import GGMLType, dequantize, type_info
from quant.blocks import FLOAT_FIELDS

from ..convert.plan import TypeChooser, scheme
from ..convert.writer import PlannedTensor, WriteResult, finish, general_metadata, typed
from ..gguf import GGUFFile

RANDOM_NOTE = "random weights: a speed workload, not a model (its output is noise)"


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_ctx: int = 4096


SHAPES = {"llama-7b": Shape(4096, 32, 32, 11008),  # Llama-2-7B
          "tiny": Shape(256, 2, 4, 512, 512)}  # the same writer at test size


def _scale(qtype: GGMLType, target: float, rng) -> float:
    """The fp16 scale value that gives random blocks of qtype a weight RMS of about `target`."""
    info = type_info(qtype)
    blocks = rng.integers(0, 256, (64, info.type_size), dtype=np.uint8)
    for off in FLOAT_FIELDS[qtype]:
        blocks[:, off:off + 2] = np.array([1.0], np.float16).view(np.uint8)
    rms = float(np.sqrt(np.mean(dequantize(blocks, qtype, info.block_size).astype(np.float64) ** 2)))
    return target / rms


def random_blocks(qtype: GGMLType, shape: tuple, target: float, rng) -> np.ndarray:
    """(n_rows, row_bytes) uint8: random quants, the float fields set to a scale in [0.5, 1.5] x the one that gives
    weights of RMS `target` (finite by construction: no NaN or infinity can come from random bytes)."""
    if qtype == GGMLType.F32:
        return np.ones(shape, np.float32).view(np.uint8)  # norms
    info = type_info(qtype)
    n_rows, n_cols = int(np.prod(shape[:-1])), shape[-1]
    nb = n_cols // info.block_size
    raw = np.frombuffer(rng.bytes(n_rows * nb * info.type_size), np.uint8).reshape(n_rows, nb, info.type_size).copy()
    base = _scale(qtype, target, rng)
    for off in FLOAT_FIELDS[qtype]:
        s = (base * rng.uniform(0.5, 1.5, (n_rows, nb, 1))).astype(np.float16)
        raw[:, :, off:off + 2] = s.view(np.uint8)
    return raw.reshape(n_rows, nb * info.type_size)


def _tensor_shapes(s: Shape, n_vocab: int) -> list:
    """(GGUF name, numpy shape) in llama.cpp's file order for a Llama model with an untied output."""
    e = s.n_embd
    out = [("token_embd.weight", (n_vocab, e))]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (e,)), (b + "attn_q.weight", (e, e)), (b + "attn_k.weight", (e, e)),
                (b + "attn_v.weight", (e, e)), (b + "attn_output.weight", (e, e)), (b + "ffn_norm.weight", (e,)),
                (b + "ffn_gate.weight", (s.n_ff, e)), (b + "ffn_up.weight", (s.n_ff, e)),
                (b + "ffn_down.weight", (e, s.n_ff))]
    return out + [("output_norm.weight", (e,)), ("output.weight", (n_vocab, e))]


def write_synthetic(out, shape: str, vocab_from, *, mix: str = "q4_k_m", seed: int = 0, force: bool = False,
                    progress=None, log=None) -> WriteResult:
    """Write a `shape` (SHAPES) Llama file in `mix` with the tokenizer of the GGUF `vocab_from` to `out` (through a
    temporary file renamed when complete: runtime/convert/writer.py)."""
    s, out = SHAPES[shape], Path(out)
    with GGUFFile(vocab_from) as g:
        tok = {k: v for k, v in g.metadata.items() if k.startswith("tokenizer.")}
    n_vocab = len(tok["tokenizer.ggml.tokens"])
    chooser = TypeChooser(scheme(mix), s.n_layer, has_output=True)
    rng = np.random.default_rng(seed)
    tensors = []
    for name, shp in _tensor_shapes(s, n_vocab):
        qtype = GGMLType.F32 if len(shp) == 1 else GGMLType(chooser.choose(name, shp)[0])
        target = 1.0 / np.sqrt(shp[-1])
        produce = lambda q=qtype, shp=shp, t=target: random_blocks(q, shp, t, rng)  # noqa: E731
        tensors.append(PlannedTensor(name, shp, qtype, produce))
    arch = "llama"
    metadata = [typed(f"{arch}.{k}", v) for k, v in [
        ("context_length", s.n_ctx), ("embedding_length", s.n_embd), ("block_count", s.n_layer),
        ("feed_forward_length", s.n_ff), ("attention.head_count", s.n_head), ("attention.head_count_kv", s.n_head),
        ("rope.dimension_count", s.n_embd // s.n_head), ("attention.layer_norm_rms_epsilon", 1e-5),
        ("rope.freq_base", 10000.0), ("vocab_size", n_vocab)]]
    metadata += [typed(k, v) for k, v in tok.items()]
    metadata += general_metadata(f"synthetic {shape} {mix} ({RANDOM_NOTE})", scheme(mix).file_type)
    metadata.append(typed("general.description", RANDOM_NOTE))
    return finish(out, arch, metadata, tensors, dry_run=False, force=force, progress=progress, log=log)
