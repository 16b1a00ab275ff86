"""Stale-kernel guard for Numba's cache.

Numba keys a cached kernel on its own source file only (modification time and size), but quant's kernels
inline code from its other files: simd.py's intrinsics into int_dot.py into kernels_int.py, fp16.py's loaders
into every block decoder. After an edit or an upgrade that changes only such a file, the cache would still
serve the old machine code. So quant's cache directory carries a stamp, a hash of all of quant's source files,
and its cached kernels are deleted when the stamp differs (one recompile, announced by jit_cache's message).
runtime/'s few kernels (layers.py) call nothing of another file, so numba's own check covers them.
"""

import hashlib
import os
from pathlib import Path

from numba.core import config

STAMP = "llamba-kernels.stamp"


def source_hash(package: Path) -> str:
    """sha256 over the names and bytes of the package's .py files."""
    h = hashlib.sha256()
    for f in sorted(package.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cache_dir(package: Path) -> Path:
    """Where numba caches the package's kernels: its __pycache__, or with NUMBA_CACHE_DIR the subdirectory that
    numba's _UserProvidedCacheLocator derives from the source directory."""
    if not config.CACHE_DIR:
        return package / "__pycache__"
    source = os.path.abspath(package)
    return Path(config.CACHE_DIR) / f"{os.path.basename(source)}_{hashlib.sha1(source.encode()).hexdigest()}"


def refresh(package: Path) -> None:
    """Delete the package's cached kernels if they were built from other sources, and stamp the directory."""
    d, stamp = cache_dir(package), source_hash(package)
    marker = d / STAMP
    try:
        if marker.read_text() == stamp:
            return
    except OSError:
        pass
    try:
        d.mkdir(parents=True, exist_ok=True)
        for f in [*d.glob("*.nbi"), *d.glob("*.nbc")]:
            f.unlink()
        marker.write_text(stamp)
    except OSError:
        pass  # a read-only cache directory: numba's own locators decide what they can use
