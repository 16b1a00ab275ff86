"""Where the CUDA tests run: on the GPU where the machine has one (an NVIDIA driver and numba-cuda), else in
numba-cuda's simulator, which runs the same kernels as Python threads on the CPU (slow: keep those tests small).

Import this before anything imports numba.cuda: it sets NUMBA_ENABLE_CUDASIM=1 for the simulator, which numba-cuda
reads once, on its first import. Only the GPU kernels and the offload import numba.cuda, so the CPU tests of the
same run are unaffected. LLAMBA_CUDASIM=1 forces the simulator on a GPU machine.
"""

import ctypes.util
import os
from importlib.util import find_spec

import pytest

HAVE_NUMBA_CUDA = find_spec("numba_cuda") is not None
REAL_GPU = (HAVE_NUMBA_CUDA and ctypes.util.find_library("cuda") is not None
            and os.environ.get("LLAMBA_CUDASIM") != "1")
if not REAL_GPU:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

needs_cuda = pytest.mark.skipif(not HAVE_NUMBA_CUDA, reason='numba-cuda is not installed: pip install -e ".[test]"')
gpu = [pytest.mark.gpu, pytest.mark.skipif(not REAL_GPU, reason="needs an NVIDIA GPU, its driver and numba-cuda "
                                                                "(the kernels run in the simulator here)")]
