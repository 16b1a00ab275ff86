"""GPU kernels (numba-cuda) over the same GGML blocks as the CPU kernels; runtime/gpu places layers on them.

  target.py     numba-cuda found on demand, the device opened (one clear error line), Kernel: compiled on first
                launch and counted; the simulator's Python twins of the njit functions kernels call
  reduce.py     block-wide sums and maxima through shared memory
  matvec.py     one warp per group of rows over quant.quads (decode, small batches, MoE experts)
  matmul.py     shared-memory tiles over quant.quads (prompt batches)
  norm.py       RMSNorm / LayerNorm of rows or heads
  rope.py       RoPE (normal, neox) of Q and K, K and V stored in the f16 KV cache
  attention.py  causal / sliding-window / ALiBi attention over the f16 KV cache, online softmax
  elementwise.py activations, softcap, clamp
  moe.py        top-k routing and the weighted sum of the experts' outputs
Importing any module but target.py needs numba-cuda (target.cuda() says so first).
"""
