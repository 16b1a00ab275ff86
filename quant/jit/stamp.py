"""Stale-kernel guard for Numba's cache.

Numba keys a cached kernel on its own source file only (modification time and size), but quant's kernels
inline code from its other files: the SIMD intrinsics into the integer row loops into the parallel kernels,
the fp16 loaders into every block decoder, across subpackages too. After an edit or an upgrade that changes
only such a file, the cache would still serve the old machine code. So quant's cache directory carries a
stamp, a hash of every `.py` file under quant/ (subpackages included: sorted relative paths and contents) plus
the instruction-set variant the integer kernels are emitted for (quant.jit.isa: numba's own key is the CPU, but
the variant can be forced lower), and the cached kernels of every directory of quant are deleted when the stamp
differs (one recompile, with the compile progress). runtime/'s few kernels (layers.py) call nothing of another
file, so numba's own check covers them.
"""

import hashlib
import os
from pathlib import Path

from numba.core import config

STAMP = "llamba-kernels.stamp"
WARM_SUFFIX = ".warm"  # markers of completed model warm-ups (runtime.model), dropped with the kernels


def sources(package: Path) -> list[Path]:
    """Every .py file under the package, subpackages included, sorted by relative path."""
    return sorted((f for f in package.rglob("*.py") if "__pycache__" not in f.parts),
                  key=lambda f: f.relative_to(package).as_posix())


def source_hash(package: Path) -> str:
    """sha256 over the relative paths and bytes of the package's .py files (recursively)."""
    h = hashlib.sha256()
    for f in sources(package):
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dir(source_dir: Path) -> Path:
    """Where numba caches the kernels defined in `source_dir`: its __pycache__, or with NUMBA_CACHE_DIR the
    subdirectory that numba's _UserProvidedCacheLocator derives from the source directory."""
    if not config.CACHE_DIR:
        return source_dir / "__pycache__"
    source = os.path.abspath(source_dir)
    return Path(config.CACHE_DIR) / f"{os.path.basename(source)}_{hashlib.sha1(source.encode()).hexdigest()}"


def refresh(package: Path, variant: str = "") -> None:
    """Delete the package's cached kernels (every directory of it) if they were built from other sources or for
    another kernel variant, and stamp the package's cache directory."""
    stamp = source_hash(package) + (f" {variant}" if variant else "")
    marker = cache_dir(package) / STAMP
    try:
        if marker.read_text() == stamp:
            return
    except OSError:
        pass
    try:
        for d in sorted({cache_dir(f.parent) for f in sources(package)}):
            for f in [*d.glob("*.nbi"), *d.glob("*.nbc"), *d.glob("*" + WARM_SUFFIX)]:
                f.unlink()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp)
    except OSError:
        pass  # a read-only cache directory: numba's own locators decide what they can use
