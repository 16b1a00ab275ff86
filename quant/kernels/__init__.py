"""The matrix kernels over quantized blocks; quant.matrix.QMatrix picks a path per matrix.

float path (`LLAMBA_KERNELS=float`, exact against float references):
  fused_dot.py   one row dot per type: quants unpacked inside the FMA loop against float32 activations
  float_path.py  matvec (rows in parallel) and matmul (tiles dequantized for a BLAS sgemm)
int path (the default, llama.cpp's numerics):
  simd.py        32-quant integer dots as LLVM vector IR (vpmaddubsw / vpmaddwd, vpshufb), whole-row intrinsics
  int_dot.py     the row dot per type against Q8_0 / Q8_K activations (quant.activation)
  int_path.py    matvec over matrices sharing an input (one parallel loop), matmul for small batches

Block offsets and scale unpackers come from quant.blocks; a new block type adds one row dot to each path.
"""

import hashlib
from pathlib import Path

from .. import jit_stamp


def _refresh_cache() -> None:
    """Delete this package's cached kernels when any source of quant/ changed (they inline quant.blocks, fp16 and
    each other, and numba checks only a kernel's own file); quant/jit_stamp.py covers quant/'s top level only."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.parent.rglob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    d = jit_stamp.cache_dir(Path(__file__).parent)
    marker = d / jit_stamp.STAMP
    try:
        if marker.read_text() == h.hexdigest():
            return
    except OSError:
        pass
    try:
        d.mkdir(parents=True, exist_ok=True)
        for f in [*d.glob("*.nbi"), *d.glob("*.nbc")]:
            f.unlink()
        marker.write_text(h.hexdigest())
    except OSError:
        pass  # a read-only cache directory: numba's own locators decide what they can use


_refresh_cache()
