"""Compile every GPU kernel to PTX for sm_90 without a GPU (numba-cuda's compiler, libNVVM from the cuda extra):
the simulator runs kernels as Python and accepts code the CUDA target would not type. Prints one line per kernel;
fails on a kernel that does not compile or that computes in float64. Exit status 3: no libNVVM here.

Run in a process without NUMBA_ENABLE_CUDASIM (tests/test_cuda_ptx.py starts one).
"""

import re
import sys

import numpy as np
from numba import cuda, typeof


def _zeros(dtype):
    return lambda *shape: np.zeros(shape, dtype)


def main() -> int:
    from numba.cuda.cudadrv import nvvm
    try:
        nvvm.NVVM()
    except Exception as e:  # NvvmSupportError, or a broken install
        print(f"no libNVVM: {e}")
        return 3
    import numba.cuda.dispatcher as dispatcher

    class _Device:  # kernels calling a non-inlined njit function (float_to_half) ask for the device's cc
        compute_capability = (9, 0)

    dispatcher.get_current_device = _Device

    from quant.kernels.cuda import attention, elementwise, matmul, matvec, moe, norm, rope
    from quant.quads import QUADS
    f32, u8, u16, i32 = (_zeros(t) for t in (np.float32, np.uint8, np.uint16, np.int32))
    half, scale = np.float32(1e-5), np.float32(0.5)
    kernels = [(f"matvec {t.name}", matvec.kernel(t), (u8(4, 8), 4, f32(1, 32), 1, i32(0), f32(0), 0, f32(1, 4), 0))
               for t in QUADS]
    kernels += [(f"matmul {t.name}", matmul.kernel(t), (u8(4, 8), f32(1, 32), f32(0), 0, f32(1, 4), 0)) for t in QUADS]
    kernels += [
        ("norm", norm.norm_kernel, (f32(2, 8), 0, 8, f32(8), f32(0), half, 1, 0, f32(2, 8))),
        ("rope", rope.rope_store, (f32(2, 8), 1, 1, 4, 4, 1, f32(4, 2), f32(4, 2), 0, u16(1, 4, 4), u16(1, 4, 4))),
        ("attention", attention.attend, (f32(2, 8), 1, 1, 4, u16(1, 4, 4), u16(1, 4, 4), 0, scale, 0, f32(0),
                                         f32(2, 4))),
        ("activation", elementwise.act_kernel, (f32(2, 8), 1, 0, f32(2, 4))),
        ("softcap", elementwise.softcap_kernel, (f32(2, 8), scale)),
        ("clamp", elementwise.clamp_kernel, (f32(2, 8), scale)),
        ("route", moe.route_kernel, (f32(2, 8), 2, i32(4), f32(4))),
        ("combine", moe.combine_kernel, (f32(4, 8), f32(4), 2, f32(2, 8))),
    ]
    bad = []
    for name, k, args in kernels:
        ptx, _ = cuda.compile_ptx(k.fn, tuple(typeof(a) for a in args), cc=(9, 0))
        f64 = len(re.findall(r"\.f64\b", ptx))
        print(f"{name:18s} {ptx.count(chr(10)):6d} lines of PTX, {f64} float64 instructions")
        if f64:
            bad.append(name)
    if bad:
        print("float64 arithmetic in:", ", ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
