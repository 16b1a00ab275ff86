"""quant.dequantize against gguf.quants (bit-exact, NaN == NaN) on random blocks, special scales and real models."""

import warnings

import numpy as np
import pytest
from gguf import quants
from gguf.constants import GGMLQuantizationType
from numba import njit

from quant import GGMLType, QuantTypeError, dequantize, row_bytes, type_info
from quant.dequant import BLOCK_DECODERS
from quant.fp16 import load_bf16, load_f16, load_f32
from runtime.gguf import GGUFFile

ALL_TYPES = list(GGMLType)

# byte offsets of the fp16 scale fields (d, m / dmin) inside one block (ggml-common.h)
FP16_SCALES = {
    GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,), GGMLType.Q2_K: (80, 82), GGMLType.Q3_K: (108,), GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,), GGMLType.IQ4_NL: (0,),
}
SPECIAL_HALVES = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0xFBFF,
                  0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF]  # zeros, subnormals, 1.0, max finite, inf, NaNs

MODEL_TYPES = {  # block types each real model must exercise (DESIGN.md §3)
    "smollm2-135m-instruct": {GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.F32},
    "gemma-3-270m": {GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K},
    "qwen2.5-coder-0.5b-instruct": {GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K},
    "qwen2.5-coder-1.5b-instruct": {GGMLType.Q4_K, GGMLType.Q6_K},
}
CHUNK_ELEMENTS = 1 << 20  # real tensors are compared in chunks of rows of about this many elements
SAMPLE_ELEMENTS = 48 << 20  # elements compared per real model


def oracle(raw: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """gguf.quants' numpy dequantization; Q8_K (not in gguf) from ggml's dequantize_row_q8_K: y = d * qs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf * 0 and friends from NaN/inf scales
        if qtype == GGMLType.Q8_K:
            blocks = raw.reshape(-1, 292)
            d = np.ascontiguousarray(blocks[:, :4]).view(np.float32)  # (n_blocks, 1)
            q = np.ascontiguousarray(blocks[:, 4:260]).view(np.int8).astype(np.float32)  # (n_blocks, 256)
            return (d * q).reshape(*raw.shape[:-1], -1)
        return np.asarray(quants.dequantize(raw, GGMLQuantizationType(int(qtype))), np.float32)


def assert_same(ours: np.ndarray, ref: np.ndarray):
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    if not np.array_equal(ours, ref, equal_nan=True):
        bad = np.argwhere(~((ours == ref) | (np.isnan(ours) & np.isnan(ref))))
        i = tuple(bad[0])
        raise AssertionError(f"{len(bad)} elements differ; first at {i}: ours {ours[i]!r}, oracle {ref[i]!r}")


def random_raw(rng, qtype, lead: tuple, blocks_per_row: int) -> tuple[np.ndarray, int]:
    info = type_info(qtype)
    n_cols = blocks_per_row * info.block_size
    return rng.integers(0, 256, (*lead, row_bytes(qtype, n_cols)), dtype=np.uint8), n_cols


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("lead,blocks_per_row", [((), 1), ((1,), 3), ((5,), 4), ((2, 3), 2), ((7, 1, 3), 5)])
def test_random_blocks(rng, qtype, lead, blocks_per_row):
    raw, n_cols = random_raw(rng, qtype, lead, blocks_per_row)
    out = dequantize(raw, qtype, n_cols)
    assert out.shape == (*lead, n_cols)
    assert_same(out, oracle(raw, qtype))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_many_blocks_threaded(rng, qtype):
    """Enough blocks that the work is split across threads; random bytes include inf/NaN/subnormal scales."""
    raw, n_cols = random_raw(rng, qtype, (64,), 16384 // type_info(qtype).block_size)
    assert_same(dequantize(raw, qtype, n_cols), oracle(raw, qtype))


def special_scale_blocks(rng, qtype) -> tuple:
    """(raw, n_cols): one random block per combination of special fp16 values in the type's scale fields."""
    offsets = FP16_SCALES[qtype]
    combos = np.array(np.meshgrid(*[SPECIAL_HALVES] * len(offsets))).reshape(len(offsets), -1).T  # (n, n_fields)
    raw, n_cols = random_raw(rng, qtype, (len(combos),), 1)
    for field, at in enumerate(offsets):
        raw[:, at:at + 2] = combos[:, field].astype("<u2").view(np.uint8).reshape(-1, 2)
    return raw, n_cols


@pytest.mark.parametrize("qtype", list(FP16_SCALES), ids=lambda t: t.name)
def test_special_scales(rng, qtype):
    """Every pair of special fp16 values in the scale fields (d, and m/dmin where the type has one)."""
    raw, n_cols = special_scale_blocks(rng, qtype)
    ours = dequantize(raw, qtype, n_cols)
    assert_same(ours, oracle(raw, qtype))
    assert np.isnan(ours).any() and np.isinf(ours).any()  # the cases really reach the output


@pytest.mark.parametrize("qtype", [GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_every_half_float(qtype):
    """All 65536 bit patterns; finite and infinite values must match bit for bit (signed zeros included)."""
    raw = np.arange(1 << 16, dtype="<u2").view(np.uint8).reshape(256, 512)
    ours, ref = dequantize(raw, qtype, 256), oracle(raw, qtype)
    assert_same(ours, ref)
    keep = ~np.isnan(ref)
    assert np.array_equal(ours.view(np.uint32)[keep], ref.view(np.uint32)[keep])


@njit(cache=True)
def _load_all(src, kind):  # every value of src (uint8) at odd byte offsets through the quant.fp16 loads
    width = 4 if kind == 2 else 2
    out = np.empty((src.size - 1) // width, np.float32)
    for i in range(out.size):
        at = 1 + width * i
        out[i] = load_f16(src, at) if kind == 0 else load_bf16(src, at) if kind == 1 else load_f32(src, at)
    return out


def test_fp16_loads(rng):
    """quant.fp16 (shared with other kernels): bit-exact against numpy for every fp16 / bf16 pattern."""
    halves = np.concatenate([[0], np.arange(1 << 16, dtype="<u2").view(np.uint8)]).astype(np.uint8)
    ref16 = np.arange(1 << 16, dtype="<u2").view(np.float16).astype(np.float32)
    ours, nan = _load_all(halves, 0), np.isnan(ref16)
    assert np.array_equal(ours.view(np.uint32)[~nan], ref16.view(np.uint32)[~nan]) and np.isnan(ours[nan]).all()
    assert np.array_equal(_load_all(halves, 1).view(np.uint32), np.arange(1 << 16, dtype=np.uint32) << 16)
    words = rng.integers(0, 256, 4 * 1000 + 1, dtype=np.uint8)
    assert np.array_equal(_load_all(words, 2).view(np.uint32), words[1:].view("<u4"))


def test_f32_bits_preserved(rng):
    raw = rng.integers(0, 256, (3, 400), dtype=np.uint8)
    ours = dequantize(raw, GGMLType.F32, 100)
    assert np.array_equal(ours.view(np.uint32), raw.view("<u4"))


@pytest.mark.parametrize("qtype", [GGMLType.Q4_K, GGMLType.Q5_0], ids=lambda t: t.name)
def test_readonly_and_strided_input(rng, qtype):
    raw, n_cols = random_raw(rng, qtype, (6,), 2)
    ro = raw.copy()
    ro.flags.writeable = False
    assert_same(dequantize(ro, qtype, n_cols), oracle(raw, qtype))
    assert_same(dequantize(raw[::2], qtype, n_cols), oracle(raw[::2].copy(), qtype))  # non-contiguous rows


def test_empty_input():
    assert dequantize(np.zeros((0, 144), np.uint8), GGMLType.Q4_K, 256).shape == (0, 256)
    assert dequantize(np.zeros((3, 0), np.uint8), GGMLType.Q8_0, 0).shape == (3, 0)


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_block_decoder_offsets(rng, qtype):
    """The exported decoders decode n blocks from any byte offset into any output offset, touching nothing else."""
    info = type_info(qtype)
    raw, _ = random_raw(rng, qtype, (), 5)
    raw.flags.writeable = False  # as from a memory map (and the specialization dequantize already compiled)
    dst = np.full(7 + 3 * info.block_size + 5, 42.0, np.float32)
    BLOCK_DECODERS[qtype](raw, info.type_size, dst, 7, 3)  # blocks 1..3 of the row
    expected = oracle(raw[info.type_size:4 * info.type_size], qtype)
    assert_same(dst[7:-5], expected)
    assert (dst[:7] == 42).all() and (dst[-5:] == 42).all()


def test_every_type_has_a_decoder():
    assert set(BLOCK_DECODERS) == set(GGMLType)


@pytest.mark.parametrize("qtype,n_cols,nbytes", [
    (GGMLType.Q4_0, 64, 35),  # one byte short
    (GGMLType.Q4_K, 256, 145),  # one byte long
    (GGMLType.Q6_K, 128, 105),  # n_cols not a multiple of the block size
    (GGMLType.Q8_0, -32, 34),  # negative length
    (GGMLType.F32, 4, 4),  # F32 counts 4 bytes per element
])
def test_bad_row_length(qtype, n_cols, nbytes):
    with pytest.raises(QuantTypeError):
        dequantize(np.zeros((2, nbytes), np.uint8), qtype, n_cols)


@pytest.mark.parametrize("qtype", [4, 5, 9, 16, 99, -1, "q9_k", "IQ2_XXS"])
def test_unknown_type(qtype):
    with pytest.raises(QuantTypeError):
        dequantize(np.zeros((1, 18), np.uint8), qtype, 32)


def test_bad_array():
    with pytest.raises(QuantTypeError):
        dequantize(np.zeros((1, 9), np.uint16), GGMLType.Q4_0, 32)  # 18 bytes, but not uint8
    with pytest.raises(QuantTypeError):
        dequantize(np.uint8(0), GGMLType.Q4_0, 32)  # 0-d


def test_accepts_type_names(rng):
    raw, n_cols = random_raw(rng, GGMLType.Q6_K, (2,), 1)
    assert_same(dequantize(raw, "q6_k", n_cols), dequantize(raw, 14, n_cols))


@pytest.mark.parametrize("name", list(MODEL_TYPES))
def test_real_model_tensors(model_path, name):
    """Every tensor of the real model against gguf.quants on the same bytes, in chunks of rows.

    gguf.quants decodes ~20-50 M elements/s, too slow for all 2.8 G elements of the four models in the
    suite's budget: each tensor compares its first and last chunk and evenly spaced chunks in between,
    about SAMPLE_ELEMENTS per model in all (all of SmolLM2's rows, a few percent of the 1.5B Qwen's).
    """
    seen = set()
    with GGUFFile(model_path(name)) as f:
        fraction = min(1.0, SAMPLE_ELEMENTS / sum(t.n_elements for t in f.tensors.values()))
        for t in f.tensors.values():
            rows = t.raw.reshape(-1, t.raw.shape[-1])  # (n_rows, row_bytes), a view of the memory map
            step = max(1, CHUNK_ELEMENTS // t.shape[-1])  # rows per chunk
            n_chunks = -(-rows.shape[0] // step)
            n_pick = min(n_chunks, max(2, int(np.ceil(n_chunks * fraction))))
            for c in np.unique(np.linspace(0, n_chunks - 1, n_pick).round().astype(int)):
                chunk = rows[c * step:(c + 1) * step]
                assert_same(dequantize(chunk, t.qtype, t.shape[-1]), oracle(chunk, t.qtype))
            if t.n_elements <= CHUNK_ELEMENTS:  # the tensor's own (1-D or 2-D) raw view
                assert dequantize(t.raw, t.qtype, t.shape[-1]).shape == t.shape
            seen.add(t.qtype)
    assert MODEL_TYPES[name] <= seen
