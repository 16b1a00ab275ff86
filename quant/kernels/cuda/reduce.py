"""Block-wide reductions through shared memory (the simulator has no warp shuffles, so neither do the kernels)."""

from numba import cuda, njit

jit = njit(inline="always")


@jit
def block_reduce(v, scratch, take_max):
    """Sum (or max) of v over the 1-D block; scratch: shared float32 of blockDim.x (a power of two) entries. Every
    thread gets the result, and scratch is free again on return."""
    t = cuda.threadIdx.x
    scratch[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            scratch[t] = max(scratch[t], scratch[t + s]) if take_max else scratch[t] + scratch[t + s]
        cuda.syncthreads()
        s //= 2
    total = scratch[0]
    cuda.syncthreads()
    return total
