"""The kernels' threads: their count, for numba's parallel loops and the BLAS sgemm of the prompt path (quant.matrix)
together, so that `-t 1` means one thread for both and two pools never oversubscribe the cores; and the one thread
that runs every forward pass (`on_kernel_thread`), whichever thread asks for it."""

import functools
import os
import queue
import threading

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from .errors import LlambaError

# GNU OpenMP (numba's parallel loops here) keeps its threads spinning after a parallel loop for 300000 turns (~7 ms on
# AMD EPYC) unless told otherwise; a long prompt's attention runs on a pool of Python threads (numpy/BLAS) right after
# one, and the spinning threads took its cores: Qwen2.5-0.5B pp512's attention, 2 threads, 316-343 -> 226-252 ms with
# 30000 turns (~0.7 ms, still longer than the gaps between a decoding step's loops: tg unchanged). Read when libgomp
# loads (numba's first parallel loop); a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")


def check_threads(n: int | None) -> int | None:
    """n itself if it is None or a thread count numba can run (1..NUMBA_NUM_THREADS); LlambaError otherwise."""
    top = numba.config.NUMBA_NUM_THREADS
    if n is not None and (not isinstance(n, int) or not 1 <= n <= top):
        raise LlambaError(f"threads must be an integer in 1..{top} (NUMBA_NUM_THREADS), got {n!r}")
    return n


def set_threads(n: int) -> None:
    """Use n threads in the calling thread's numba kernels and in BLAS (process-wide), the latter set from the kernel
    thread: OpenBLAS set to 2 threads from the main thread before the first forward pass kept a worker thread
    spinning through every prompt that followed (Qwen2.5-0.5B pp512, 2 threads: 170-180 against 330-400 tok/s)."""
    numba.set_num_threads(n)
    on_kernel_thread(blas_threads, n)


@functools.cache
def _blas():
    """numpy's BLAS libraries (a threadpoolctl controller), found once."""
    return ThreadpoolController().select(user_api="blas")


def blas_threads(n: int) -> None:
    """Let BLAS (numpy's) use n threads from now on: a few microseconds per call. The integer path's forward passes
    call BLAS only for the attention's small products, and OpenBLAS threads spin for a while after each one, which
    halves the speed of the numba kernels that follow on a 2-CPU machine (a 64-token prompt of Qwen2.5-0.5B: 390 ms
    with one BLAS thread, 1.1-1.3 s with two): they run with 1, the sgemm prompt path with the kernel threads'."""
    _blas().limit(limits=n)


class _KernelThread:
    """The one thread that runs every forward pass of the process (`on_kernel_thread`).

    Numba's parallel loops run on GNU OpenMP here, which keeps a team of threads per calling thread; once two
    callers have teams (the main thread warmed a model up, a worker generates), libgomp sees more threads than
    CPUs and stops spinning between parallel regions, and a decoding step costs 30-40% more (measured 29 -> 40 ms
    on Qwen2.5-0.5B, 2 threads). Routing the calls through one long-lived thread keeps one team, whichever thread
    asks (the server's request threads, async workers, a desktop app's UI thread)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._pid = None

    def run(self, fn, *args):
        """fn(*args) on the kernel thread with the caller's numba thread count and NumPy error handling (per-thread
        settings); its result, or its exception raised here. Called on the kernel thread itself, it runs fn
        directly."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        job = _Job(fn, args, numba.get_num_threads(), np.geterr())
        self._queue().put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _queue(self) -> queue.SimpleQueue:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child (threads do not survive fork)
                self._jobs, self._pid = queue.SimpleQueue(), os.getpid()
                self._thread = threading.Thread(target=self._serve, args=(self._jobs,), name="llamba-kernels",
                                                daemon=True)
                self._thread.start()
            return self._jobs

    @staticmethod
    def _serve(jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            try:
                numba.set_num_threads(job.n_threads)
                with np.errstate(**job.errors):
                    job.result = job.fn(*job.args)
            except BaseException as e:  # noqa: BLE001 (raised in the caller)
                job.error = e
            finally:
                job.done.set()


class _Job:
    def __init__(self, fn, args, n_threads: int, errors: dict):
        self.fn, self.args, self.n_threads, self.errors = fn, args, n_threads, errors
        self.result = self.error = None
        self.done = threading.Event()


on_kernel_thread = _KernelThread().run
