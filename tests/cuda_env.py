"""Where the CUDA tests run: on the GPU where the machine has one (an NVIDIA driver and numba-cuda), else in
numba-cuda's simulator, which runs the same kernel source as Python on the CPU.

Import this before anything imports numba.cuda: it sets NUMBA_ENABLE_CUDASIM=1 for the simulator (and reloads
numba's config, which numba-cuda reads once, on its first import). Only the GPU kernels and the offload import
numba.cuda, so the CPU tests of the same run are unaffected. LLAMBA_CUDASIM=1 forces the simulator on a GPU machine.

The simulator runs every CUDA thread of a block as an OS thread and polls them from a loop that holds the GIL, and
hands kernels wrapper objects for arrays: ~1 ms per CUDA thread on these machines, a minute per token of a tiny
model. Here a block's threads run as greenlets instead, each until its next syncthreads (the same barrier
semantics, in a fixed order), and kernels get the numpy arrays behind the simulator's device arrays: ~60x faster.
"""

import ctypes.util
import os
from importlib.util import find_spec

import numpy as np
import pytest

HAVE_NUMBA_CUDA = find_spec("numba_cuda") is not None
REAL_GPU = (HAVE_NUMBA_CUDA and ctypes.util.find_library("cuda") is not None
            and os.environ.get("LLAMBA_CUDASIM") != "1")
if not REAL_GPU:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from numba.core import config  # numba.cuda reads numba's config, which read the environment when numba loaded

    config.reload_config()

needs_cuda = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason='numba-cuda is not installed: pip install -e ".[test]"')
real_gpu = pytest.mark.skipif(not REAL_GPU, reason="needs an NVIDIA GPU, its driver and numba-cuda (the kernels run "
                                                   "in the simulator here)")  # with pytest.mark.gpu


def _greenlet_blocks() -> None:
    """Swap the simulator's block scheduler (numba-cuda 0.30's simulator/kernel.py, kernelapi.py) for greenlets."""
    from greenlet import getcurrent, greenlet
    from numba.cuda.simulator import kernel, kernelapi

    class Thread:  # what the simulator's cuda module asks of the running thread
        def __init__(self, block_dim, block_idx, thread_idx):
            self.blockIdx, self.threadIdx = kernelapi.Dim3(*block_idx), kernelapi.Dim3(*thread_idx)
            self.thread_id = thread_idx[0] + block_dim[0] * (thread_idx[1] + block_dim[1] * thread_idx[2])

    def run_block(self, grid_point, *args):  # BlockManager.run: every thread up to its next syncthreads, repeatedly
        threads = []
        for p in np.ndindex(*self._block_dim):
            g = greenlet(lambda: self._f(*args), parent=getcurrent())
            g.cuda_thread = Thread(self._block_dim, grid_point, p)
            threads.append(g)
        while threads:
            for g in threads:
                g.switch()
            threads = [g for g in threads if not g.dead]

    kernel.BlockManager.run = run_block
    kernel.FakeWithinKernelCUDAArray = lambda a: a._ary  # the array itself, not a wrapper checking each access
    module = kernelapi.FakeCUDAModule
    module.threadIdx = property(lambda self: getcurrent().cuda_thread.threadIdx)
    module.blockIdx = property(lambda self: getcurrent().cuda_thread.blockIdx)
    module.laneid = property(lambda self: getcurrent().cuda_thread.thread_id % 32)
    module.syncthreads = lambda self: getcurrent().parent.switch()


if not REAL_GPU and HAVE_NUMBA_CUDA and find_spec("greenlet") is not None:
    _greenlet_blocks()
