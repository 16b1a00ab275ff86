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

from quant.jit import cache as jit_cache
from quant.jit import stamp as jit_stamp

ROOT = Path(__file__).resolve().parents[1]

# Runs the bandwidth probe's kernel from the installed copy and reports what numba did.
CHILD = """
import json, numba
from pathlib import Path
import quant
from quant.jit import cache as jit_cache
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
    env.update(PYTHONPATH=f"{pkg}{os.pathsep}{ROOT}", HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))

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


BLAS_CHILD = """
import sys, json
import numpy as np
from runtime.eval.bandwidth import _stream_sum
_stream_sum(np.ones(10, np.float32), 1)
out = {"scipy.linalg loaded by kernels": "scipy.linalg" in sys.modules}
if "--dot" in sys.argv:
    from numba import njit
    a = np.arange(6.0).reshape(2, 3)
    y = njit(lambda a, x: np.dot(a, x))(a, np.ones(3))
    out.update(after="scipy.linalg" in sys.modules, ok=bool((y == a @ np.ones(3)).all()))
print(json.dumps(out))
"""


def _blas_child(*args) -> dict:
    p = subprocess.run([sys.executable, "-c", BLAS_CHILD, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_kernels_run_without_scipy_linalg():
    # numba imports scipy.linalg (0.2-0.7 s) when its CPU target loads, unless quant.jit.blas_probe defers it.
    # llamba's kernels call no BLAS and llamba does not depend on scipy: this holds with or without scipy.
    assert _blas_child() == {"scipy.linalg loaded by kernels": False}


def test_numba_blas_still_works_after_the_deferred_probe():
    # The deferral must not break numba's own linear algebra for an application that uses it beside llamba.
    # numba's np.dot needs scipy for BLAS; scipy comes with the test extra (llamba itself never needs it).
    pytest.importorskip("scipy", reason="numba's np.dot needs scipy (in the test extra); llamba does not")
    assert _blas_child("--dot") == {"scipy.linalg loaded by kernels": False, "after": True, "ok": True}


# Runs one of quant's kernels (a small one: Q8_0's dequantizer) from the copy and reports how many llamba kernels had
# to be compiled.
QUANT_CHILD = """
import json
import numpy as np
import quant
from quant.jit import cache
assert (quant.dequantize(np.zeros((2, 34), np.uint8), "Q8_0", 32) == 0).all()
print(json.dumps({"quant": quant.__file__, "compiled": cache.compiles()}))
"""


def test_edit_of_any_kernel_source_recompiles(tmp_path):
    """numba checks only the defining file of a cached kernel; kernels inline code of other quant files, so an
    edit of any of them (here one the kernels run here may not even use, in a subpackage when there is one) must
    drop the cache: one recompile."""
    pkg = tmp_path / "site-packages"
    shutil.copytree(ROOT / "quant", pkg / "quant", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(pkg))

    def compiled() -> int:
        p = subprocess.run([sys.executable, "-c", QUANT_CHILD], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["quant"].startswith(str(pkg))
        return out["compiled"]

    assert compiled() > 0
    assert compiled() == 0  # from the cache
    edited = max((f for f in jit_stamp.sources(pkg / "quant") if "jit" not in f.parts),
                 key=lambda f: (len(f.parts), f.name))
    with open(edited, "a") as f:
        f.write("# edited\n")
    assert compiled() > 0
    assert compiled() == 0


def test_stamp_refresh(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 1\n")
    caches = [pkg / "__pycache__", pkg / "sub" / "__pycache__"]  # numba caches a kernel beside its source
    for c in caches:
        c.mkdir()
        (c / "k.nbi").write_text("")

    def kept() -> list:
        return [(c / k).exists() for c in caches for k in ("k.nbi", "k.nbc")]

    jit_stamp.refresh(pkg)  # no stamp: built from unknown sources
    assert kept() == [False] * 4
    assert (caches[0] / jit_stamp.STAMP).read_text() == jit_stamp.source_hash(pkg)
    for c in caches:
        (c / "k.nbi").write_text("")
        (c / "k.nbc").write_text("")
    jit_stamp.refresh(pkg)
    assert kept() == [True] * 4  # same sources: kept
    (pkg / "sub" / "b.py").write_text("y = 2\n")  # an edit in a subpackage drops the kernels of every directory
    jit_stamp.refresh(pkg)
    assert kept() == [False] * 4


def test_source_hash_covers_subpackages_by_relative_path(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 1\n")
    h = jit_stamp.source_hash(pkg)
    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")  # same bytes, another file
    assert jit_stamp.source_hash(pkg) != h
    (pkg / "sub" / "c.py").rename(pkg / "sub" / "b.py")
    assert jit_stamp.source_hash(pkg) == h
    (pkg / "sub" / "__pycache__").mkdir()
    (pkg / "sub" / "__pycache__" / "stray.py").write_text("")  # not a source
    (pkg / "data.txt").write_text("")
    assert jit_stamp.source_hash(pkg) == h


# A cold kernel cache of its own: the model's warm-up compiles every kernel (with its progress), after which
# a short prompt, a long one (the sgemm path, as a chat's), decoding and all-token logits compile nothing.
WARMUP_CHILD = """
import json, sys
from quant.jit import cache
from runtime import LLM
llm = LLM("smollm2-135m-instruct", n_ctx=1024)
after_warmup = cache.compiles()
llm.generate("The capital of France is", 3, temperature=0)
llm.generate("Once upon a time, " * 6, 3, temperature=0)
llm.generate(" word" * 960, 3, temperature=0)  # decoding over enough keys for the parallel attention kernel
llm.logits(llm.tokenize("Hello there"))
print(json.dumps({"warmup": llm.kernels_compiled, "later": cache.compiles() - after_warmup}))
"""


def test_warmup_compiles_every_kernel_up_front(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(NUMBA_CACHE_DIR=str(tmp_path / "numba"), LLAMBA_KERNELS="int")  # the default path, cold

    def run() -> tuple[dict, str]:
        p = subprocess.run([sys.executable, "-c", WARMUP_CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr

    cold, err = run()
    assert cold["warmup"] > 0 and cold["later"] == 0
    progress = [line for line in err.splitlines() if line.startswith("llamba: compiling kernels")]
    done = [tuple(map(int, line.rsplit(" ", 1)[1].split("/"))) for line in progress]  # (k, N), plain lines
    assert len(done) >= 2 and done[-1][0] == done[-1][1] and done == sorted(done), err
    assert jit_cache.MESSAGE not in err  # the progress replaces the one-line message
    assert "Warning" not in err, err  # the warm-up's scratch layer overflows: quietly (its errstate, every thread)

    markers = list((tmp_path / "numba").rglob("*.warm"))
    assert len(markers) == 1  # this model's warm-up completed: the next one is skipped

    warm, err = run()
    assert warm == {"warmup": 0, "later": 0}
    assert "compiling" not in err  # a warm cache: silent

    markers[0].unlink()  # the full warm-up on a warm cache: every kernel loads, none compiles
    warm, err = run()
    assert warm == {"warmup": 0, "later": 0} and "compiling" not in err
