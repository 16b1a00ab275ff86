"""Quantize float32 activations to Q8_0 / Q8_K for the integer kernels (ggml's vec_dot_type).

Output per activation row: int8 quants qx (n,), float32 block scales dx, int32 sums of qx over every
16 elements bs (n // 16,) (ggml's bsums), which carry the weights' offsets and sub-block minimums, and for
Q8_0 xs (n // 32,) = d * sum of the block's quants (ggml's Q8_1 `s`), the activation side of a Q4_1/Q5_1
block's minimum.
The block quantizers are quant.quantize's (the storage formats Q8_0 and Q8_K): Q8_0 d is kept as its fp16 value;
a block holding NaN gets a NaN scale (NaN activations stay NaN through the integer kernels).
"""

import numpy as np
from numba import njit

from .blocks import QK
from .fp16 import float_to_half, half_to_float
from .quantize import q8_0_block, q8_k_block
from .types import QK_K

jit = njit(cache=True, nogil=True, error_model="numpy")


@jit
def _q8_0_row(x, qx, dx):
    for b in range(x.shape[0] // QK):
        dx[b] = half_to_float(float_to_half(q8_0_block(x[QK * b:QK * (b + 1)], qx[QK * b:QK * (b + 1)])))


@jit
def _q8_k_row(x, qx, dx):
    for b in range(x.shape[0] // QK_K):
        dx[b] = q8_k_block(x[QK_K * b:QK_K * (b + 1)], qx[QK_K * b:QK_K * (b + 1)])


@jit
def _nan_scales(x, dx, block):
    """A block holding NaN gets a NaN scale, so that the dot products with it are NaN, as the float path's are
    (ggml's block quantizers turn NaN into arbitrary integers)."""
    for b in range(dx.shape[0]):
        bad = False
        for j in range(block * b, block * (b + 1)):
            bad |= x[j] != x[j]
        if bad:
            dx[b] = np.nan


@jit
def quantize_rows(X, block, qx, dx, bs, xs):
    """X (n_tok, n) float32 -> qx (n_tok, n) int8, dx (n_tok, n // block), bs (n_tok, n // 16) int32,
    xs (n_tok, n // 32) float32 (Q8_0 only)."""
    for t in range(X.shape[0]):
        if block == QK_K:
            _q8_k_row(X[t], qx[t], dx[t])
        else:
            _q8_0_row(X[t], qx[t], dx[t])
        _nan_scales(X[t], dx[t], block)
        for s in range(bs.shape[1]):
            total = 0
            for j in range(16 * s, 16 * s + 16):
                total += qx[t, j]
            bs[t, s] = total
        if block != QK_K:
            for b in range(xs.shape[1]):
                xs[t, b] = dx[t, b] * np.float32(bs[t, 2 * b] + bs[t, 2 * b + 1])


def quantize_activations(X: np.ndarray, block: int):
    """X (n_tok, n) float32 -> (qx int8, dx float32, bs int32, xs float32) for weights of `block`
    (32 -> Q8_0, 256 -> Q8_K)."""
    n_tok, n = X.shape
    block = QK_K if block == QK_K else 32
    qx, dx = np.empty((n_tok, n), np.int8), np.empty((n_tok, n // block), np.float32)
    bs, xs = np.empty((n_tok, n // 16), np.int32), np.empty((n_tok, n // 32), np.float32)
    quantize_rows(X, block, qx, dx, bs, xs)
    return qx, dx, bs, xs


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (..., n) -> quants (..., n) int8, scales (..., n // 32) float32 (fp16 values)."""
    X = np.ascontiguousarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    qx, dx, _, _ = quantize_activations(X, 32)
    return qx.reshape(np.shape(x)), dx.reshape(*np.shape(x)[:-1], -1)


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (..., n) -> quants (..., n) int8 in [-127, 127], scales (..., n // 256) float32."""
    X = np.ascontiguousarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    qx, dx, _, _ = quantize_activations(X, QK_K)
    return qx.reshape(np.shape(x)), dx.reshape(*np.shape(x)[:-1], -1)
