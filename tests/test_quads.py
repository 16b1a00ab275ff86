"""quant.quads (the GPU kernels' block decoders) compiled for the CPU: bit-exact against gguf.quants on random
blocks of every weight type, special scales included (NaN == NaN)."""

import numpy as np
import pytest
from numba import njit
from test_dequant import FP16_SCALES, assert_same, oracle, random_raw, special_scale_blocks

from quant.quads import QUAD_BLOCKS, QUADS


@njit
def _decode(quad, raw, block, size, out):
    # raw (n_rows, row_bytes) -> out (n_rows, n_cols), one quad at a time as a GPU lane reads them
    per_block = block // 4
    for r in range(raw.shape[0]):
        for k in range(out.shape[1] // 4):
            v = quad(raw[r], (k // per_block) * size, k % per_block)
            for i in range(4):
                out[r, 4 * k + i] = v[i]


def decode(raw: np.ndarray, qtype, n_cols: int) -> np.ndarray:
    out = np.empty((raw.shape[0], n_cols), np.float32)
    _decode(QUADS[qtype], raw, *QUAD_BLOCKS[qtype], out)
    return out


@pytest.mark.parametrize("qtype", list(QUADS), ids=lambda t: t.name)
def test_random_blocks(rng, qtype):
    raw, n_cols = random_raw(rng, qtype, (6,), 8)  # float types: 8 elements per row
    assert_same(decode(raw, qtype, n_cols), oracle(raw, qtype))


@pytest.mark.parametrize("qtype", list(FP16_SCALES), ids=lambda t: t.name)
def test_special_scales(rng, qtype):
    raw, n_cols = special_scale_blocks(rng, qtype)
    assert_same(decode(raw, qtype, n_cols), oracle(raw, qtype))
