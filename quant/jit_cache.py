"""Where Numba caches the compiled kernels, and a message when they must be compiled.

Importing this module runs `configure()`; `quant/__init__.py` imports it before any kernel module,
since numba picks a function's cache directory when the function is decorated. Kernels are cached
next to their source in `__pycache__`; when that directory is not writable (llamba installed into a
read-only site-packages) they go to a per-user directory, `$XDG_CACHE_HOME/llamba/numba` or
`~/.cache/llamba/numba` (a temporary directory when neither is writable). An explicit
`NUMBA_CACHE_DIR` always wins. The choice applies to every llamba kernel (those of `runtime/` too):
a read-only install makes both packages read-only.

`configure()` then drops cached kernels built from other sources (quant.jit_stamp) and installs a
listener on numba's compile event, so a run that has to compile kernels (cold cache, new CPU, edited
kernel source) says so once on stderr instead of looking hung.
"""

import os
import sys
import tempfile
from pathlib import Path

from numba.core import config, event

from . import jit_stamp

PACKAGES = ("quant", "runtime")  # whose kernels the compile message is about
MESSAGE = "llamba: compiling kernels for this CPU (cached for later runs; up to ~30 s)..."


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


class _CompileNotice(event.Listener):
    """Prints MESSAGE once, when numba starts compiling one of llamba's kernels (a cache miss)."""

    shown = False

    def on_start(self, ev):
        func = getattr((ev.data or {}).get("dispatcher"), "py_func", None)
        module = getattr(func, "__module__", None) or ""
        if not _CompileNotice.shown and module.split(".")[0] in PACKAGES:
            _CompileNotice.shown = True
            print(MESSAGE, file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


def configure(package_dir: Path):
    """Point numba's cache at a writable directory and install the compile message."""
    cache_dir = choose_cache_dir(package_dir)
    if cache_dir is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(cache_dir)  # numba re-reads its environment before compiling
        config.CACHE_DIR = str(cache_dir)
    jit_stamp.refresh(package_dir)  # after the choice of directory: kernels built from other sources go
    event.register("numba:compile", _CompileNotice())


configure(Path(__file__).parent)
