"""Which instruction set the integer kernels (quant/kernels/simd.py) are emitted for, chosen once at start-up.

The variants, best first, and what the host CPU must report (`llvmlite.binding.get_host_cpu_features()`):
  avx512vnni  AVX-512 F/BW/VL + VNNI: 64 u8 x s8 products per vpdpbusd (zmm), vpmaddubsw + vpdpwssd for scaled sums
  avxvnni     AVX2 + 256-bit vpdpbusd / vpdpwssd (AVX-VNNI, or AVX-512 VNNI with VL)
  avx2        vpmaddubsw / vpmaddwd (ggml's AVX2 scheme)
  portable    plain LLVM vector IR (widening multiplies), for any CPU LLVM targets
When numba compiles for another CPU than the host (NUMBA_CPU_NAME), the portable variant is used. The variant is
never assumed: LLAMBA_ISA can force a lower one (benchmarks and tests), never one the host lacks. It is part of the
kernel cache's stamp (quant.jit.stamp), so a cache built for one variant is not reused for another.
"""

import os
import sys

from llvmlite import binding
from numba import config

VARIANTS = ("avx512vnni", "avxvnni", "avx2", "portable")
_NEEDS = {"avx512vnni": ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"},),
          "avxvnni": ({"avx2", "avxvnni"}, {"avx2", "avx512vl", "avx512vnni"}),
          "avx2": ({"avx2"},),
          "portable": (set(),)}


def supported(features: dict | None = None) -> list[str]:
    """The variants this CPU runs, best first (features: llvmlite's host feature map; None: the host's)."""
    if features is None:
        if config.CPU_NAME not in (None, "host"):  # compiling for another CPU: stay portable
            return ["portable"]
        features = binding.get_host_cpu_features()
    have = {k for k, v in features.items() if v}
    return [v for v in VARIANTS if any(need <= have for need in _NEEDS[v])]


def choose(env=os.environ) -> str:
    """The best variant the host supports, or LLAMBA_ISA's when the host supports it."""
    ok = supported()
    forced = env.get("LLAMBA_ISA")
    if forced:
        if forced in ok:
            return forced
        print(f"llamba: LLAMBA_ISA={forced} is not supported by this CPU (it runs {', '.join(ok)}); using {ok[0]}",
              file=sys.stderr)
    return ok[0]


ISA = choose()
