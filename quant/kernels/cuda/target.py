"""The CUDA target: numba-cuda found on demand, the device opened with one clear error line, kernels launched and
counted.

numba-cuda compiles the njit functions a kernel calls (quant.quads, quant.blocks, quant.fp16, the helpers in
this package) as device functions, so the GPU runs the CPU's source. Its simulator (NUMBA_ENABLE_CUDASIM=1, set
before numba is first imported) runs kernels as Python threads on the CPU, but cannot pass its array stand-ins to
compiled functions: there a kernel runs as its `python_twin`, whose globals hold the Python twins of the njit
functions it reaches.
"""

import functools
import math
import types
from dataclasses import dataclass

import numpy as np
from numba.core.dispatcher import Dispatcher
from numba.core.extending import _Intrinsic

from ... import fp16

EXTRA = 'pip install -e ".[cuda]"'


class CudaUnavailable(RuntimeError):
    """What GPU offload lacks (numba-cuda, its CUDA libraries, a driver, a GPU), in one line."""


@functools.cache
def cuda():
    """numba.cuda, or CudaUnavailable when numba-cuda is not installed."""
    try:
        import numba_cuda  # noqa: F401  (numba.cuda without it is numba's old, removed target)
    except ImportError:
        raise CudaUnavailable(f"GPU offload needs numba-cuda, which is not installed: {EXTRA}") from None
    from numba import cuda
    return cuda


def simulating() -> bool:
    """Whether numba.cuda is the simulator (NUMBA_ENABLE_CUDASIM=1 when it was first imported)."""
    cuda()
    from numba.cuda.core import config
    return bool(config.ENABLE_CUDASIM)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    total_bytes: float  # inf in the simulator
    free_bytes: float
    compute_capability: tuple

    def __str__(self) -> str:
        cc = ".".join(map(str, self.compute_capability))
        memory = (f", {self.free_bytes / 2**30:.1f} of {self.total_bytes / 2**30:.1f} GiB free"
                  if math.isfinite(self.total_bytes) else "")
        return f"GPU {self.index}: {self.name} (compute {cc}{memory})"


def open_device(index: int = 0) -> DeviceInfo:
    """Select GPU `index` for this thread's kernels; CudaUnavailable names the missing piece."""
    cu = cuda()
    from numba.cuda.cudadrv.error import CudaSupportError
    try:
        n = len(cu.gpus)
    except CudaSupportError as e:
        if "NO_DEVICE" in str(e):  # cuInit: CUDA_ERROR_NO_DEVICE
            n = 0
        else:
            raise CudaUnavailable(f"GPU offload needs the NVIDIA driver, which is missing or failed ({_detail(e)})"
                                  ) from None
    if n == 0:
        raise CudaUnavailable("GPU offload needs a CUDA GPU, and the NVIDIA driver reports none")
    if not 0 <= index < n:
        raise CudaUnavailable(f"main GPU {index} does not exist: this machine has {n} (0..{n - 1})")
    if not simulating():
        _check_compiler()
    cu.select_device(index)
    free, total = cu.current_context().get_memory_info()
    dev = cu.get_current_device()
    name = getattr(dev, "name", "numba-cuda simulator")
    return DeviceInfo(index, name.decode() if isinstance(name, bytes) else str(name), float(total), float(free),
                      tuple(dev.compute_capability))


def _check_compiler() -> None:
    from numba.cuda.cudadrv import nvvm
    from numba.cuda.cudadrv.error import NvvmSupportError
    try:
        nvvm.NVVM()
    except NvvmSupportError as e:
        raise CudaUnavailable(f"the CUDA compiler library (libNVVM) is missing ({_detail(e)}): {EXTRA}") from None


def _detail(e: Exception) -> str:
    """The line of a numba-cuda error that says what went wrong (not its 'Error at driver init' heading)."""
    lines = [s.strip(" :") for s in str(e).splitlines() if s.strip(" :")]
    return next((s for s in lines if not s.startswith("Error at")), lines[0] if lines else type(e).__name__)


# ---- kernels ----

_launches = _compiles = 0


def launches() -> int:
    """Kernels launched so far in this process (per-token figures are differences of two readings)."""
    return _launches


def compiles() -> int:
    """Kernels compiled so far in this process (each on its first launch)."""
    return _compiles


def blocks_for(n: int, per_block: int) -> int:
    return max(1, -(-n // per_block))


STRIDE_THREADS = 256  # threads per block of the grid-stride kernels


def stride_grid(n: int) -> tuple:
    """(blocks, threads) of a grid-stride loop over n elements."""
    return min(blocks_for(n, STRIDE_THREADS), 1024), STRIDE_THREADS


@functools.cache
def nothing(dtype=np.float32):
    """A zero-length device array: a kernel's absent optional argument (a bias, expert ids)."""
    return cuda().to_device(np.zeros(0, dtype))


class Kernel:
    """A CUDA kernel compiled on its first launch (the simulator runs its python_twin); `k[grid, block](*args)`."""

    def __init__(self, fn):
        self.fn = fn  # the Python source, for cuda.compile_ptx
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def compiled(self):
        global _compiles
        _compiles += 1
        return cuda().jit(python_twin(self.fn) if simulating() else self.fn)

    def __getitem__(self, launch: tuple):
        return functools.partial(self._launch, launch)

    def _launch(self, launch: tuple, *args) -> None:
        global _launches
        _launches += 1
        self.compiled[launch](*args)


# ---- the simulator's Python twins ----

# intrinsics emit LLVM IR, so they have no Python body: their Python equivalents
_PY_INTRINSICS = {
    fp16.bits_as_f32: lambda bits: np.uint32(bits).view(np.float32),
    fp16._f32_bits: lambda f: np.float32(f).view(np.uint32),
    fp16.widen: lambda x: np.float32(x.view(np.float16) if isinstance(x, np.uint16) else x),
}
_twins: dict = {}  # id(function or globals) -> its twin
_keep: list = []  # the originals behind _twins' ids


def python_twin(obj):
    """A kernel or njit function as Python whose globals and closure cells hold the twins of the njit functions and
    intrinsics it calls; a twin that uses numba.cuda is wrapped as a simulator device function."""
    if isinstance(obj, _Intrinsic):
        return _PY_INTRINSICS[obj]
    fn = obj.py_func if isinstance(obj, Dispatcher) else obj
    if not isinstance(fn, types.FunctionType):
        return obj
    twin = _twins.get(id(fn))
    if twin is None:
        closure = fn.__closure__ and tuple(types.CellType(_twin_value(c.cell_contents)) for c in fn.__closure__)
        twin = types.FunctionType(fn.__code__, _twin_globals(fn.__globals__), fn.__name__, fn.__defaults__, closure)
        if isinstance(obj, Dispatcher) and any(v is cuda() for v in fn.__globals__.values()):
            twin = cuda().jit(device=True)(twin)
        _twins[id(fn)] = twin
        _keep.append(fn)
    return twin


def _twin_value(v):
    return python_twin(v) if isinstance(v, (Dispatcher, _Intrinsic)) else v


def _twin_globals(g: dict) -> dict:
    """One twin per module namespace (its functions share it, as the simulator's cuda swap expects)."""
    twin = _twins.get(id(g))
    if twin is None:
        twin = _twins[id(g)] = dict(g)
        _keep.append(g)
        for k, v in g.items():
            twin[k] = _twin_value(v)
    return twin
