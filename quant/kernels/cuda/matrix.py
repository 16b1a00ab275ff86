"""DeviceMatrix: a QMatrix's raw GGML blocks uploaded once to the GPU (no dequantized copy), with its products.

Matrices that share an input (Q, K, V; up, gate; a MoE layer's experts) are uploaded as a DeviceGroup: rows
concatenated when their types agree (one launch for all), else side by side, each writing its own columns of
the common output.
"""

import itertools

import numpy as np
from numba import cuda

from ...quads import QUAD_BLOCKS
from ...types import QuantTypeError
from .matmul import matmul
from .matvec import matvec
from .target import nothing

MATVEC_MAX_TOKENS = 8  # up to this many tokens a warp per (row, token) beats decoding tiles (llama.cpp: 8)


class DeviceMatrix:
    def __init__(self, raw: np.ndarray, qtype, n_cols: int, n_rows: int | None = None):
        """raw: uint8 (n_rows, row_bytes), or (n_expert, n_rows, row_bytes) stacked experts (n_rows: per expert)."""
        if qtype not in QUAD_BLOCKS:
            raise QuantTypeError(f"no GPU kernels for {getattr(qtype, 'name', qtype)}")
        if n_cols % 4:
            raise QuantTypeError(f"GPU kernels need rows of a multiple of 4 elements, got {n_cols}")
        self.qtype, self.n_cols = qtype, int(n_cols)
        self.n_rows = int(n_rows if n_rows is not None else raw.shape[0])
        self.raw = cuda.to_device(np.ascontiguousarray(raw).reshape(-1, raw.shape[-1]))  # (rows, row_bytes)

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def __call__(self, x, y, bias, add: bool = False, col0: int = 0) -> None:
        # x (n, n_cols) -> y[:, col0:col0 + n_rows] (+)= x @ W.T + bias (bias (0,): none)
        if x.shape[0] <= MATVEC_MAX_TOKENS:
            matvec(self.qtype, self.raw, self.n_rows, x, y, bias, add, col0)
        else:
            matmul(self.qtype, self.raw, x, y, bias, add, col0)

    def experts(self, x, y, ids, x_div: int, col0: int = 0) -> None:
        """y[i, col0:col0 + n_rows] = W[ids[i]] x[i // x_div] for stacked experts (n_rows each)."""
        matvec(self.qtype, self.raw, self.n_rows, x, y, nothing(), False, col0, ids, x_div)


class DeviceGroup:
    """Matrices sharing one input, uploaded for one output of all their rows side by side. Each kind is a QMatrix,
    or a list of the n_expert QMatrix views of a MoE layer's stacked experts (then rows interleave per expert:
    expert e's up rows, then its gate rows)."""

    def __init__(self, kinds, biases=()):
        kinds = [k if isinstance(k, list) else [k] for k in kinds]
        parts, col0 = [], 0
        for _, run in itertools.groupby(kinds, key=lambda ms: ms[0].qtype):  # neighbours of one type: one launch
            run = list(run)
            raws = [_stacked(ms) for ms in run]
            raw = raws[0] if len(raws) == 1 else np.concatenate(raws, axis=1)  # (n_expert or 1, rows, row_bytes)
            parts.append((DeviceMatrix(raw, run[0][0].qtype, run[0][0].n_cols, raw.shape[1]), col0))
            col0 += raw.shape[1]
        self.parts, self.n_rows, self.n_cols = parts, col0, parts[0][0].n_cols
        sizes = [ms[0].n_rows for ms in kinds]
        b = list(biases) + [None] * (len(kinds) - len(biases))
        self.bias = (cuda.to_device(np.concatenate([np.zeros(n, np.float32) if v is None else v
                                                    for n, v in zip(sizes, b, strict=True)]).astype(np.float32))
                     if any(v is not None for v in b) else None)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p, _ in self.parts) + (self.bias.nbytes if self.bias is not None else 0)

    def __call__(self, x, y, add: bool = False) -> None:
        # x (n, n_cols) -> y (n, n_rows) (+)= the group's products and biases
        for m, col0 in self.parts:
            bias = nothing() if self.bias is None else self.bias[col0:col0 + m.n_rows]
            m(x, y, bias, add, col0)

    def experts(self, x, y, ids, x_div: int) -> None:
        # x (m_in, n_cols) -> y (m, n_rows): output i from expert ids[i] and input x[i // x_div]
        for m, col0 in self.parts:
            m.experts(x, y, ids, x_div, col0)


def _stacked(mats: list) -> np.ndarray:
    """(n_expert or 1, n_rows, row_bytes) raw blocks of one kind (no copy for a single matrix)."""
    return mats[0].raw[None] if len(mats) == 1 else np.stack([m.raw for m in mats])
