"""The machine's streaming read bandwidth: the bound on token generation, which reads every weight once per token."""

import time

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def _stream_sum(a):
    s = 0.0
    for i in prange(a.shape[0]):  # hot loop: one streaming read of the array
        s += a[i]
    return s


def read_bandwidth(nbytes: int = 10**9, repeats: int = 5) -> float:
    """GB/s of a parallel sum over a float32 array of nbytes with the current Numba thread count.

    Best of `repeats` after a warm-up run (compilation, page faults): the bound is what the machine can reach.
    """
    a = np.ones(max(nbytes // 4, 1), np.float32)
    _stream_sum(a)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _stream_sum(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9
