"""Where Numba caches the compiled kernels, and what a run says when they must be compiled.

Importing this module runs `configure()`; `quant/__init__.py` imports it (through quant.jit) before any kernel
module, since numba picks a function's cache directory when the function is decorated. Kernels are cached
next to their source in `__pycache__`; when quant's `__pycache__` is not writable (llamba installed into a
read-only site-packages) they go to a per-user directory, `$XDG_CACHE_HOME/llamba/numba` or
`~/.cache/llamba/numba` (a temporary directory when neither is writable). An explicit `NUMBA_CACHE_DIR`
always wins. The choice applies to every llamba kernel (those of `runtime/` too): a read-only install makes
both packages read-only.

`configure()` then drops cached kernels built from other sources or for another instruction-set variant
(quant.jit.stamp, quant.jit.isa) and installs a listener on
numba's compile event, which counts llamba's kernel compilations (cache misses) and tells the watchers of
`watch_compiles` (the model warm-up's progress display). With no watcher, a run that has to compile kernels
(cold cache, new CPU, edited kernel source) says so once on stderr instead of looking hung.
"""

import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from numba.core import config, event

from . import isa, stamp

PACKAGES = ("quant", "runtime")  # whose kernels the compile message is about
MESSAGE = "llamba: compiling kernels for this CPU (cached for later runs; a minute or two)..."


def writable(path: Path) -> bool:
    """True when files can be created in `path` (created if missing), tested as numba tests it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def user_cache_dir(env=os.environ) -> Path:
    """The per-user cache directory for kernels when the package's own `__pycache__` is read-only."""
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "llamba" / "numba"


def choose_cache_dir(package_dir: Path, env=os.environ) -> Path | None:
    """The directory to give numba as its cache directory, or None to keep numba's in-tree default."""
    if env.get("NUMBA_CACHE_DIR") or writable(package_dir / "__pycache__"):
        return None
    shared = f"llamba-numba-{os.getuid()}" if hasattr(os, "getuid") else "llamba-numba"  # no getuid on Windows
    for candidate in (user_cache_dir(env), Path(tempfile.gettempdir()) / shared):
        if writable(candidate):
            return candidate
    return None  # nowhere to write: numba's own locators decide (and say so)


_compiles = 0  # llamba kernel compilations started in this process (cache misses)
_compile_seconds = 0.0  # wall time spent in them (outermost compilations only; nested ones run inside)
_depth = threading.local()  # llamba compilations in progress in this thread, and when the outermost began
_watchers: list = []  # callables run at each one; while there are any, MESSAGE is not printed


def compiles() -> int:
    """How many llamba kernel compilations (cache misses; nested kernels count too) this process started."""
    return _compiles


def compile_seconds() -> float:
    """Seconds this process spent compiling llamba kernels so far (speed figures subtract it)."""
    return _compile_seconds


@contextmanager
def watch_compiles(callback):
    """Run `callback()` at the start of each llamba kernel compilation inside the block, instead of MESSAGE."""
    _watchers.append(callback)
    try:
        yield
    finally:
        _watchers.remove(callback)


class _CompileNotice(event.Listener):
    """Counts compilations of llamba's kernels; prints MESSAGE at the first one unless someone is watching."""

    shown = False

    @staticmethod
    def _ours(ev) -> bool:
        func = getattr((ev.data or {}).get("dispatcher"), "py_func", None)
        return (getattr(func, "__module__", None) or "").split(".")[0] in PACKAGES

    def on_start(self, ev):
        global _compiles
        if not self._ours(ev):
            return
        _compiles += 1
        depth = getattr(_depth, "n", 0)
        if depth == 0:
            _depth.since = time.perf_counter()
        _depth.n = depth + 1
        if _watchers:
            for callback in list(_watchers):
                callback()
        elif not _CompileNotice.shown:
            _CompileNotice.shown = True
            print(MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev):
        global _compile_seconds
        depth = getattr(_depth, "n", 0)
        if depth <= 0 or not self._ours(ev):
            return
        _depth.n = depth - 1
        if depth == 1:
            _compile_seconds += time.perf_counter() - _depth.since


def configure(package_dir: Path):
    """`package_dir`: quant/. Point numba's cache at a writable directory and install the compile message."""
    cache_dir = choose_cache_dir(package_dir)
    if cache_dir is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir)  # numba re-reads its environment before compiling
        config.CACHE_DIR = str(cache_dir)
    stamp.refresh(package_dir, isa.ISA)  # after the choice of directory: kernels built from other sources go
    event.register("numba:compile", _CompileNotice())


configure(Path(__file__).parent.parent)  # quant/
