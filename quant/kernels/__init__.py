"""The matrix kernels over quantized blocks; quant.matrix.QMatrix picks a path per matrix.

float path (`LLAMBA_KERNELS=float`, exact against float references):
  fused_dot.py   one row dot per type: quants unpacked inside the FMA loop against float32 activations
  float_path.py  matvec (rows in parallel) and matmul (tiles dequantized for a BLAS sgemm)
int path (the default, llama.cpp's numerics):
  simd.py        32-quant integer dots as LLVM vector IR for the CPU's variant (quant.jit.isa: AVX-512 VNNI,
                 AVX-VNNI, AVX2, portable), whole-row intrinsics
  interleaved.py the 16-row dots over interleaved groups (quant.interleave): one row per 32-bit lane
  int_dot.py     the row dot per type against Q8_0 / Q8_K activations (quant.activation), the group dots' dispatch
  int_path.py    matvec over matrices sharing an input (one parallel loop), matmul for small batches

Block offsets and scale unpackers come from quant.blocks; a new block type adds one row dot to each path.
Cached machine code is dropped when any source under quant/ changes (quant.jit.stamp).
"""
