"""The kernels' thread count: numba's parallel loops and the BLAS sgemm of the prompt path (quant.matrix), set
together, so that `-t 1` means one thread for both and two pools never oversubscribe the cores."""

import numba
from threadpoolctl import threadpool_limits

from .errors import LlambaError


def check_threads(n: int | None) -> int | None:
    """n itself if it is None or a thread count numba can run (1..NUMBA_NUM_THREADS); LlambaError otherwise."""
    top = numba.config.NUMBA_NUM_THREADS
    if n is not None and (not isinstance(n, int) or not 1 <= n <= top):
        raise LlambaError(f"threads must be an integer in 1..{top} (NUMBA_NUM_THREADS), got {n!r}")
    return n


def set_threads(n: int) -> None:
    """Use n threads in the calling thread's numba kernels and in BLAS (process-wide)."""
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
