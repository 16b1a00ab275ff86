"""Every forward pass runs on the one kernel thread (runtime.threads.on_kernel_thread), whichever thread asks, with
the asking thread's kernel thread count: GNU OpenMP keeps a team per calling thread, and two live teams on a small
machine make every parallel loop wait on a futex (a decoding step measured 29 -> 40 ms)."""

import threading
import warnings

import numba
import numpy as np
import pytest
import tiny_gguf

from runtime import threads
from runtime.errors import LlambaError
from runtime.model import load_model


def test_kernel_thread_runs_every_caller_with_its_thread_count():
    seen = []

    def probe(tag):
        seen.append((tag, threading.current_thread().name, numba.get_num_threads()))
        return tag

    def caller(tag, n):
        numba.set_num_threads(n)
        assert threads.on_kernel_thread(probe, tag) == tag

    workers = [threading.Thread(target=caller, args=(f"w{i}", 1 + i % numba.config.NUMBA_NUM_THREADS))
               for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    caller("main", 1)
    assert sorted(tag for tag, _, _ in seen) == ["main", "w0", "w1", "w2", "w3"]
    assert {name for _, name, _ in seen} == {"llamba-kernels"}
    assert all(n == 1 + int(tag[1:]) % numba.config.NUMBA_NUM_THREADS for tag, _, n in seen if tag != "main")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_kernel_thread_raises_in_the_caller_and_nests():
    def boom():
        raise LlambaError("from the kernel thread")

    with pytest.raises(LlambaError, match="from the kernel thread"):
        threads.on_kernel_thread(boom)
    # a job that asks for the kernel thread again runs in place (no deadlock)
    assert threads.on_kernel_thread(lambda: threads.on_kernel_thread(lambda: threading.current_thread().name)) == \
        "llamba-kernels"


def test_forward_passes_run_on_the_kernel_thread(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    tiny_gguf.write(path)
    model = load_model(path, n_ctx=32)
    names = []
    layers = type(model.layers[0])
    call = layers.__call__
    monkeypatch.setattr(layers, "__call__", lambda self, *a: (names.append(threading.current_thread().name),
                                                              call(self, *a))[1])
    run = layers.run
    monkeypatch.setattr(layers, "run", lambda self, *a: (names.append(threading.current_thread().name),
                                                         run(self, *a))[1])
    caches = [model.new_cache(), model.new_cache()]
    want = model.forward(np.array([1, 2, 3], np.int32), 0, caches[0])
    t = threading.Thread(target=lambda: model.forward(np.array([1, 2, 3], np.int32), 0, caches[1]))
    t.start()
    t.join()
    model.forward_batch(np.array([4, 4], np.int32), [3, 3], caches)
    assert names and set(names) == {"llamba-kernels"}
    assert np.array_equal(model.forward(np.array([1, 2, 3], np.int32), 0, model.new_cache()), want)


def test_set_threads_limits_blas_from_the_kernel_thread(monkeypatch):
    """OpenBLAS limited to 2 threads from the main thread before the first forward pass kept a worker spinning
    through every prompt after it (pp512 at half speed): set_threads gives BLAS its count on the kernel thread."""
    seen = []
    monkeypatch.setattr(threads, "blas_threads", lambda n: seen.append((n, threading.current_thread().name)))
    threads.set_threads(1)
    assert numba.get_num_threads() == 1
    assert seen == [(1, "llamba-kernels")]
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_numpy_error_handling_follows_the_call_to_the_kernel_thread():
    """np.errstate is per thread: a forward pass runs with its caller's (the warm-up's scratch layer overflows
    quietly, an application's "raise" raises)."""
    divide = lambda: np.ones(1, np.float32) / np.float32(0)  # noqa: E731
    with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
        threads.on_kernel_thread(divide)
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert threads.on_kernel_thread(divide)[0] == np.inf
