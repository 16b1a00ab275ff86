"""Quantize float32 activations to Q8_0 / Q8_K for the integer kernels (ggml's vec_dot_type).

Returns the quants as float32 holding exact integers (what the kernels consume) and the block scales:
Q8_0 (32-blocks, scale rounded to fp16, round half away from zero, as quantize_row_q8_0_ref) for the
32-block weight types; Q8_K (256-blocks, float32 scale, the signed extreme maps to -127, round to
nearest even, as quantize_row_q8_K_ref) for the K-quants.
"""

import numpy as np

from .types import QK_K


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (..., n) -> quants (..., n) f32 in [-127, 127], scales (..., n // 32) f32 (fp16 values)."""
    b = _blocks(x, 32)  # (..., n_blocks, 32)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    v = b * inv
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))  # roundf: half away from zero
    return q.reshape(np.shape(x)).astype(np.float32), d[..., 0].astype(np.float16).astype(np.float32)


def quantize_q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (..., n) -> quants (..., n) f32 in [-128, 127], scales (..., n // 256) f32."""
    b = _blocks(x, QK_K)  # (..., n_blocks, 256)
    i = np.abs(b).argmax(axis=-1)[..., None]
    extreme = np.take_along_axis(b, i, axis=-1)  # the signed value of largest magnitude
    with np.errstate(divide="ignore"):
        iscale = np.where(extreme == 0, np.float32(0), np.float32(-127) / extreme).astype(np.float32)
        d = np.where(iscale == 0, np.float32(0), np.float32(1) / iscale).astype(np.float32)
    q = np.minimum(np.rint(b * iscale), np.float32(127))
    return q.reshape(np.shape(x)).astype(np.float32), d[..., 0]
