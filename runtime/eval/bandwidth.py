"""The machine's streaming read bandwidth: the bound on token generation, which reads every weight once per token.

The probe sums a float32 array much larger than the last-level cache. Each thread sweeps one contiguous
slice (what hardware prefetchers stream best) in a separate fastmath function, so LLVM vectorizes the
sum with several 8-wide accumulators; a reduction written directly in the `prange` body does not
vectorize and measures the adder's latency instead of the memory.
"""

import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

import quant.jit  # noqa: F401  numba's cache directory and start-up settings, before a kernel here is decorated


@njit(cache=True, nogil=True, fastmath=True)
def _slice_sum(a):
    s = np.float32(0.0)
    for i in range(a.shape[0]):  # hot loop: contiguous loads (i >= 0: no wraparound), many lanes
        s += a[i]
    return s


@njit(cache=True, nogil=True, parallel=True)
def _stream_sum(a, n_slices):
    """Sum of a (n,) float32, read once: n_slices contiguous slices, one per prange iteration."""
    n = a.shape[0]
    step = (n + n_slices - 1) // n_slices
    parts = np.zeros(n_slices, np.float32)
    for t in prange(n_slices):
        parts[t] = _slice_sum(a[t * step:min(n, (t + 1) * step)])
    return parts.sum()


def read_bandwidth(nbytes: int = 10**9, repeats: int = 5) -> float:
    """GB/s (1e9 bytes/s) of one read of a float32 array of nbytes with the current Numba thread count.

    Best of `repeats` after a warm-up run (compilation, first touch): the bound is what the machine can
    reach. nbytes should be well above the last-level cache (1 GB by default).
    """
    if nbytes < 4 or repeats < 1:
        raise ValueError(f"need nbytes >= 4 and repeats >= 1, got {nbytes} and {repeats}")
    a = np.ones(nbytes // 4, np.float32)  # written here, so no page faults are timed
    n_slices = numba.get_num_threads()
    _stream_sum(a, n_slices)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _stream_sum(a, n_slices)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's largest cache from Linux sysfs (e.g. the L3), or None where unknown.

    Weights that fit in it are not streamed from memory every token, so generation can beat the bound.
    """
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=None)
