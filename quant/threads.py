"""The kernels' thread count: numba's parallel loops and the BLAS sgemm of the prompt path (quant.matrix), set
together, so that `-t 1` means one thread for both and two pools never oversubscribe the cores."""

import numba
from threadpoolctl import threadpool_limits


def set_threads(n: int) -> None:
    """Use n threads in the calling thread's numba kernels and in BLAS (process-wide)."""
    numba.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
