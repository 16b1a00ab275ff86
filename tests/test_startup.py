"""Start-up: where compiled kernels are cached (read-only installs included) and the cold-run message.

The read-only install is simulated for real: `quant/` copied into a temporary directory, made
read-only with `chmod` (non-root) or a read-only bind mount in a private mount namespace (root, which
ignores permission bits), then a kernel is run twice in child processes. Numba's own dispatcher
statistics say whether the second run loaded the cache or compiled again.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from quant import jit_cache, jit_stamp

ROOT = Path(__file__).resolve().parents[1]

# Runs the bandwidth probe's kernel from the installed copy and reports what numba did.
CHILD = """
import json, numba
from pathlib import Path
import quant
from quant import jit_cache, jit_stamp
from runtime.eval.bandwidth import _stream_sum, read_bandwidth
read_bandwidth(1 << 20, repeats=1)
print(json.dumps({
    "quant": quant.__file__,
    "in_tree_writable": jit_cache.writable(Path(quant.__file__).parent / "__pycache__"),
    "cache_dir": numba.config.CACHE_DIR,
    "hits": sum(_stream_sum.stats.cache_hits.values()),
    "misses": sum(_stream_sum.stats.cache_misses.values()),
}))
"""


def _read_only_prefix(pkg: Path) -> list[str]:
    """Command prefix that runs a command with `pkg` read-only."""
    if os.geteuid() != 0:
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return []
    mount = f'mount --bind "{pkg}" "{pkg}" && mount -o remount,bind,ro "{pkg}" "{pkg}" && exec "$@"'
    for unshare in (["unshare", "-m"], ["unshare", "-r", "-m"]):  # a mount namespace; else in a user namespace
        prefix = [*unshare, "sh", "-c", mount, "sh"]
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("root without a usable `unshare -m`: cannot make a read-only install here")


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


@pytest.fixture
def read_only_install(tmp_path):
    pkg = tmp_path / "site-packages"
    shutil.copytree(ROOT / "quant", pkg / "quant", ignore=shutil.ignore_patterns("__pycache__"))
    prefix = _read_only_prefix(pkg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k != "XDG_CACHE_HOME"}
    env.update(PYTHONPATH=str(pkg), HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))

    def run() -> tuple[dict, str]:
        p = subprocess.run([*prefix, sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr

    yield pkg, tmp_path / "xdg" / "llamba" / "numba", run
    for p in [pkg, *pkg.rglob("*")]:  # writable again, so tmp_path can be removed
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_install_caches_in_user_dir(read_only_install):
    pkg, user_dir, run = read_only_install
    cold, err = run()
    assert cold["quant"].startswith(str(pkg)), "the child must import the read-only copy"
    assert not cold["in_tree_writable"], "the simulated install is not read-only"
    assert cold["cache_dir"] == str(user_dir)
    assert cold["misses"] == 1 and cold["hits"] == 0
    assert jit_cache.MESSAGE in err
    cached = _files(user_dir)
    assert any(f.endswith(".nbi") and "bandwidth" in f for f in cached), cached
    assert any(f.endswith(".nbc") and "bandwidth" in f for f in cached), cached
    assert not (pkg / "quant" / "__pycache__").exists()

    warm, err = run()
    assert warm["hits"] == 1 and warm["misses"] == 0  # loaded from the user directory, not compiled
    assert jit_cache.MESSAGE not in err
    assert _files(user_dir) == cached  # nothing new written


def test_choose_cache_dir(tmp_path):
    not_a_dir = tmp_path / "file"  # its __pycache__ cannot be created, as in a read-only install
    not_a_dir.write_text("")
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert jit_cache.choose_cache_dir(not_a_dir, xdg) == tmp_path / "xdg" / "llamba" / "numba"
    assert jit_cache.choose_cache_dir(not_a_dir, {**xdg, "NUMBA_CACHE_DIR": str(tmp_path / "nb")}) is None
    assert jit_cache.choose_cache_dir(tmp_path / "pkg", xdg) is None  # in-tree __pycache__ is writable
    assert (tmp_path / "pkg" / "__pycache__").is_dir()


def test_kernels_run_without_scipy_linalg_and_numba_blas_still_works():
    # numba imports scipy.linalg (0.2-0.7 s) when its CPU target loads, unless quant.blas_probe defers it;
    # numba's np.dot must still work (it imports scipy.linalg when compiled). Oracle: numpy's dot.
    code = """
import sys, json
import numpy as np
from numba import njit
from runtime.eval.bandwidth import _stream_sum
_stream_sum(np.ones(10, np.float32), 1)
before = "scipy.linalg" in sys.modules
a = np.arange(6.0).reshape(2, 3)
y = njit(lambda a, x: np.dot(a, x))(a, np.ones(3))
print(json.dumps({"before": before, "after": "scipy.linalg" in sys.modules, "ok": bool((y == a @ np.ones(3)).all())}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"before": False, "after": True, "ok": True}


def test_edit_of_any_kernel_source_recompiles(tmp_path):
    """numba checks only the defining file of a cached kernel; kernels inline code of other quant files, so an
    edit of any of them (here fp16.py, which the probe does not even use) must drop the cache: one recompile."""
    pkg = tmp_path / "site-packages"
    shutil.copytree(ROOT / "quant", pkg / "quant", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(pkg))

    def run() -> dict:
        p = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])

    assert run()["misses"] == 1
    assert run()["hits"] == 1
    with open(pkg / "quant" / "fp16.py", "a") as f:
        f.write("# edited\n")
    assert run()["misses"] == 1
    assert run()["hits"] == 1


def test_stamp_refresh(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    cache = pkg / "__pycache__"
    cache.mkdir()
    (cache / "k.nbi").write_text("")
    jit_stamp.refresh(pkg)  # no stamp: built from unknown sources
    assert not (cache / "k.nbi").exists() and (cache / jit_stamp.STAMP).read_text() == jit_stamp.source_hash(pkg)
    (cache / "k.nbi").write_text("")
    (cache / "k.nbc").write_text("")
    jit_stamp.refresh(pkg)
    assert (cache / "k.nbi").exists() and (cache / "k.nbc").exists()  # same sources: kept
    (pkg / "a.py").write_text("x = 2\n")
    jit_stamp.refresh(pkg)
    assert not (cache / "k.nbi").exists() and not (cache / "k.nbc").exists()
