"""Start-up: keep numba from importing scipy.linalg (0.2-0.7 s) for kernels that never call BLAS.

When numba's CPU target first loads (the first kernel call, even from the cache), `numba.np.arraymath`
checks at import time that BLAS is usable by importing `scipy.linalg.cython_blas`, which pulls in all of
scipy.linalg. llamba's kernels call no BLAS. `defer()` imports arraymath with that import-time check
answered from whether scipy is installed; numba's own `ensure_blas()` stays in place for its linear
algebra functions (np.dot, np.linalg.*), which run it when such a call is compiled, so they work as
before and scipy is imported only then. Importing this module runs `defer()`.
"""

import importlib.util
import sys


def defer():
    """Import numba.np.arraymath without importing scipy.linalg (no-op if already imported)."""
    if "numba.np.arraymath" in sys.modules or importlib.util.find_spec("scipy") is None:
        return  # without scipy, numba's check is fast (and says "no BLAS")
    import numba.np.linalg as linalg

    ensure_blas = getattr(linalg, "ensure_blas", None)
    if ensure_blas is None:  # a numba without this probe: nothing to defer
        return
    linalg.ensure_blas = lambda: None  # what arraymath's `from numba.np.linalg import ensure_blas` binds
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        linalg.ensure_blas = ensure_blas


defer()
