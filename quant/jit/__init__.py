"""Numba plumbing, imported first by `quant/__init__.py`: numba picks a function's cache directory when the
function is decorated, so this must run before any kernel module is imported.

- `cache`: where compiled kernels are cached (a per-user directory for read-only installs), the count of
  kernel compilations, and the one-line message when kernels compile outside a progress display.
- `isa`: the instruction-set variant of the integer kernels (AVX-512 VNNI, AVX-VNNI, AVX2, portable), chosen once.
- `stamp`: drops cached kernels built from other sources or variants (numba checks only a kernel's own file).
- `blas_probe`: keeps numba's CPU target from importing scipy.linalg at start-up.
"""

from . import blas_probe, cache  # noqa: F401  (importing them configures numba)
