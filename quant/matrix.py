"""QMatrix: a (n_rows, n_cols) weight matrix stored as raw GGML blocks, computed on without unpacking it.

Two kernel paths (quant/kernels/: float_path.py, int_path.py):
  "float": weights decoded on the fly against float32 activations (exact up to float32 rounding);
  "int":   activations quantized to Q8_0/Q8_K and integer dots per block, as llama.cpp does.
The float types (F32/F16/BF16) always use the float path. DEFAULT_PATH applies where none is given:
"int" (llama.cpp's numerics, the fast path), or the environment variable LLAMBA_KERNELS ("float" gives
results as close to float32 dequantized weights as possible, for comparisons with float references).
"""

import os

import numpy as np

from .blocks import layout
from .dequant import dequantize
from .interleave import interleavable, interleave
from .kernels import float_path as kernels_float
from .kernels import int_path as kernels_int
from .types import QK_K, GGMLType, QuantTypeError, row_bytes, type_info

PATHS = ("float", "int")
BLAS_MIN_TOKENS = 16  # float path: from this many tokens on, tiles are dequantized to float32 for a BLAS sgemm
# (compute-bound prompt batches; ggml's BLAS backend does the same for large batches); fewer go row by row
INT_BLAS_MIN_TOKENS = 256  # integer path, 32-block types: the same switch. Below it the integer GEMM (activations
# quantized once, each weight block unpacked once per 4 tokens) beats dequantizing every weight to float32: 2 threads,
# tok/s int / sgemm, 64 tokens Qwen2.5-0.5B (mostly Q5_0) 117-164 / 55; 512 tokens 142 / 153, SmolLM2 (Q4_1) 358 / 500.
INT_K_BLAS_MIN_TOKENS = 1 << 16  # integer path, K-quants and interleaved matrices: the integer GEMM measured faster
# at every length (Qwen2.5-1.5B, Q4_K / Q6_K: 61 / 28 tok/s at 64 tokens, 63 / 50 at 512; interleaved 32-block types,
# 512 tokens against sgemm from 256: Qwen2.5-0.5B 216-276 / 135-146, SmolLM2 538-581 / 331-394), so never sgemm.
# Either way, a token below the switch is computed exactly as it would be alone.
DEFAULT_PATH = os.environ.get("LLAMBA_KERNELS") or "int"
_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view (no copy), so memory maps and test arrays share one compiled kernel."""
    v = a.view()
    v.flags.writeable = False
    return v


def _f32(a, ndim: int, n_cols: int, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != ndim or a.shape[-1] != n_cols:
        raise ValueError(f"{what} must have {ndim} dimension(s) with {n_cols} columns, got shape {a.shape}")
    return a


def _deliver(y: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return y
    if out.shape != y.shape:
        raise ValueError(f"out has shape {out.shape}, expected {y.shape}")
    out[...] = y
    return out


_NO_RAW, _NO_Y = _readonly(np.empty((0, 1), np.uint8)), np.empty((0, 0), np.float32)  # an unused slot of a group


def _pad(items: tuple, fill) -> tuple:
    """items filled up to kernels_int.GROUP slots (matmul_many's one compiled signature)."""
    return items + (fill,) * (kernels_int.GROUP - len(items))


class QMatrix:
    """raw (n_rows, row_bytes) GGML blocks (not copied). On the integer path, a type with 16-row kernels
    (quant.interleave) is interleaved into a copy on its first product, unless `interleave` is False; then
    `on_interleaved(raw)` is called (a memory-mapped file's owner can let the original pages go)."""

    def __init__(self, raw: np.ndarray, qtype, n_cols: int, path: str | None = None, interleave: bool = True,
                 on_interleaved=None):
        self.qtype = type_info(qtype).type
        if self.qtype == GGMLType.Q8_K:
            raise QuantTypeError("Q8_K is an activation type, not a weight type")
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 2:
            raise QuantTypeError(f"raw must be a 2-D uint8 array, got {getattr(raw, 'dtype', type(raw))}")
        if raw.shape[1] != row_bytes(self.qtype, n_cols):
            raise QuantTypeError(f"{self.qtype.name} rows of {n_cols} elements take {row_bytes(self.qtype, n_cols)}"
                                 f" bytes, raw has {raw.shape[1]}")
        self.path = path or DEFAULT_PATH
        if self.path not in PATHS:
            raise ValueError(f"unknown kernel path {self.path!r} (LLAMBA_KERNELS?); choose one of {PATHS}")
        self.raw = _readonly(np.ascontiguousarray(raw))  # (n_rows, row_bytes); no copy when contiguous
        self.n_cols = int(n_cols)
        self._block, self._sub = layout(self.qtype, self.n_cols)
        self.interleave, self.on_interleaved, self._blocks = interleave, on_interleaved, None

    @property
    def n_rows(self) -> int:
        return self.raw.shape[0]

    @property
    def shape(self) -> tuple:
        return (self.n_rows, self.n_cols)

    @property
    def _int(self) -> bool:
        return self.path == "int" and self.qtype not in _FLOAT_TYPES

    @property
    def _interleaved(self) -> bool:  # whether the integer kernels take this matrix's blocks interleaved
        return self.interleave and interleavable(self.qtype, self.n_rows)

    @property
    def blocks(self) -> tuple[np.ndarray, int]:
        """(blocks, code) for the integer kernels: the interleaved groups (made on first use) with code
        int(qtype) | INTERLEAVED, or GGML's rows with int(qtype)."""
        if self._blocks is None:
            if self._interleaved:
                self._blocks = _readonly(interleave(self.raw, self.qtype)), int(self.qtype) | kernels_int.INTERLEAVED
                if self.on_interleaved is not None:
                    self.on_interleaved(self.raw)
            else:
                self._blocks = self.raw, int(self.qtype)
        return self._blocks

    @property
    def sgemm_tokens(self) -> int:
        """From how many tokens on matmul runs sgemm over dequantized tiles (below, every token as if alone)."""
        if not self._int:
            return BLAS_MIN_TOKENS
        if self._block == QK_K or self._interleaved:
            return INT_K_BLAS_MIN_TOKENS
        return INT_BLAS_MIN_TOKENS

    def __repr__(self) -> str:
        return f"QMatrix({self.qtype.name}, shape={self.shape}, path={self.path!r})"

    def dequantize(self) -> np.ndarray:  # (n_rows, n_cols) float32
        return dequantize(self.raw, self.qtype, self.n_cols)

    def get_rows(self, ids) -> np.ndarray:  # (len(ids), n_cols) float32, e.g. an embedding lookup
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) and ids.size:
            raise ValueError(f"row ids must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
        if ids.size and (ids.min() < -self.n_rows or ids.max() >= self.n_rows):
            raise IndexError(f"row id out of range for {self.n_rows} rows")
        return dequantize(self.raw[ids], self.qtype, self.n_cols)

    def _kernel_args(self) -> tuple[tuple, tuple]:  # matmul_many's raws and codes
        blocks, code = self.blocks
        return _pad((blocks,), _NO_RAW), (code,) * kernels_int.GROUP

    def matvec(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # x (n_cols,) float32 -> (n_rows,) float32
        x = _f32(x, 1, self.n_cols, "x")
        direct = out is not None and out.dtype == np.float32 and out.shape == (self.n_rows,) and out.flags.c_contiguous
        y = out if direct else np.empty(self.n_rows, np.float32)
        if self._int:
            kernels_int.matmul_many(*self._kernel_args(), x[None], _pad((y[None],), _NO_Y))
            return y if direct else _deliver(y, out)
        xsum = kernels_float.sub_sums(x, self._sub)
        kernels_float.matvec(self.raw, int(self.qtype), x, xsum, y)
        return y if direct else _deliver(y, out)

    def matmul(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        # X (n_tokens, n_cols) float32 -> (n_tokens, n_rows) float32
        X = _f32(X, 2, self.n_cols, "X")
        if not self._int and X.shape[0] < self.sgemm_tokens:  # row by row: each row exactly as a single token's
            Y = out if out is not None and out.shape == (X.shape[0], self.n_rows) else None
            rows = [self.matvec(x, None if Y is None else Y[i]) for i, x in enumerate(X)]
            return Y if Y is not None else _deliver(np.stack(rows), out)
        direct = (out is not None and out.dtype == np.float32 and out.shape == (X.shape[0], self.n_rows)
                  and out.flags.c_contiguous)
        Y = out if direct else np.empty((X.shape[0], self.n_rows), np.float32)
        if self._int and X.shape[0] < self.sgemm_tokens:
            kernels_int.matmul_many(*self._kernel_args(), X, _pad((Y,), _NO_Y))
        else:
            kernels_float.matmul(self.raw, self.qtype, self.n_cols, X, Y)
        return Y if direct else _deliver(Y, out)


class MatrixGroup:
    """Matrices sharing one input (Q, K, V; up, gate), multiplied together: on the integer path below the sgemm
    switch the input is quantized once per activation type and all rows run in one parallel loop (one kernel call,
    each output the same bits as its matrix's own matvec / matmul). Checked once, when built."""

    def __init__(self, mats):
        self.mats = tuple(mats)
        self.fused = (all(m._int for m in self.mats) and len({m.n_cols for m in self.mats}) == 1
                      and len(self.mats) <= kernels_int.GROUP)
        self.sgemm_tokens = min(m.sgemm_tokens for m in self.mats)

    def __call__(self, X: np.ndarray, outs) -> None:
        # X (n, n_cols) float32 -> outs[i] (n, n_rows_i) float32 C-contiguous
        if not self.fused or X.shape[0] >= self.sgemm_tokens:
            for m, y in zip(self.mats, outs, strict=True):
                m.matmul(X, out=y)
            return
        X = _f32(X, 2, self.mats[0].n_cols, "X")
        for m, y in zip(self.mats, outs, strict=True):
            if y.dtype != np.float32 or y.shape != (X.shape[0], m.n_rows) or not y.flags.c_contiguous:
                raise ValueError(f"out must be float32 of shape ({X.shape[0]}, {m.n_rows}), contiguous; got {y.dtype} "
                                 f"{y.shape}")
        blocks, codes = zip(*(m.blocks for m in self.mats), strict=True)
        kernels_int.matmul_many(_pad(blocks, _NO_RAW), _pad(codes, codes[0]), X, _pad(tuple(outs), _NO_Y))
