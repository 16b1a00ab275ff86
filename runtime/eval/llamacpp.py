"""llama.cpp (llama-cpp-python) as the other engine of `llamba bench --compare llama.cpp`.

It runs in a child process (`python -m runtime.eval.llamacpp`), so that its peak RSS and its threads
are its own; `LlamaCppEngine` drives it over pipes, one JSON line per command and per answer, and has
the same methods as the llamba engine (set_threads, prepare, run, peak_rss, close).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from ..errors import LlambaError
from .timing import peak_rss_bytes, time_test

INSTALL_HINT = 'pip install -e ".[interop]"'


def open_llama(extra_buffers: bool = False, **kwargs):
    """llama_cpp.Llama(**kwargs). With `extra_buffers` False (the default, for the tests' oracle uses) llama.cpp's
    extra weight buffers (AMX / repacked AVX-512 layouts) are turned off, so that its reference CPU kernels run;
    llama-cpp-python has no argument for it, so the default model parameters are swapped for the duration of the
    call. With `extra_buffers` True llama.cpp runs as users get it (its defaults: repacked weights on): the
    benchmark peer. A CPU that advertises AMX its VM does not enable needs a build with AMX off (.ci/run)."""
    import llama_cpp

    if extra_buffers:
        return llama_cpp.Llama(**kwargs)
    lib = llama_cpp.llama_cpp
    default_params = lib.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        return llama_cpp.Llama(**kwargs)
    finally:
        lib.llama_model_default_params = default_params


def check_installed():
    if importlib.util.find_spec("llama_cpp") is None:
        raise LlambaError(f"--compare llama.cpp needs llama-cpp-python, which is not installed: {INSTALL_HINT}")


class LlamaCppEngine:
    name = "llama.cpp"
    offload = ""  # the peer runs on the CPU

    def __init__(self, path, n_ctx: int, threads: int):
        check_installed()
        self._log = tempfile.TemporaryFile(mode="w+")  # llama.cpp's own messages, shown when it fails
        self._proc = subprocess.Popen([sys.executable, "-m", "runtime.eval.llamacpp"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True)
        info = self._call(op="load", path=os.fspath(path), n_ctx=n_ctx, threads=threads)
        self.load_seconds, self.version = info["load_s"], info["version"]

    def _call(self, **cmd) -> dict:
        try:
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        reply = json.loads(line) if line else {"error": self._death()}
        if "error" in reply:
            self._log.seek(0)
            tail = self._log.read()[-2000:].strip()
            self.close()
            raise LlambaError(f"llama.cpp: {reply['error']}" + (f"\n{tail}" if tail else ""))
        return reply

    def _death(self) -> str:
        code = self._proc.wait()
        if code >= 0:
            return f"the llama-cpp-python process exited with code {code}"
        why = f"the llama-cpp-python process was killed by {signal.Signals(-code).name}"
        if -code == signal.SIGILL:
            why += " (its build uses instructions this machine does not allow: reinstall it built for this CPU)"
        return why

    def set_threads(self, n: int):
        self._call(op="threads", n=n)

    def prepare(self, tokens, depth: int):
        self._call(op="prepare", tokens=[int(t) for t in tokens], depth=depth)

    def run(self, depth: int, n_prompt: int, n_gen: int) -> float:
        return self._call(op="run", depth=depth, n_prompt=n_prompt, n_gen=n_gen)["seconds"]

    def peak_rss(self) -> int:
        return self._call(op="rss")["peak_rss"]

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait()
        self._log.close()


class _Child:
    """The child's state: one llama_cpp.Llama and the tokens of the current test."""

    def load(self, path, n_ctx, threads):
        import llama_cpp

        t0 = time.perf_counter()
        # the peer as users get it: llama-cpp-python's defaults (repacked weights on)
        self.llm = open_llama(extra_buffers=True, model_path=path, n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, n_batch=512, verbose=False, logits_all=False)
        return {"load_s": time.perf_counter() - t0, "version": llama_cpp.__version__}

    def threads(self, n):
        self.llm._ctx.set_n_threads(n, n)
        return {}

    def prepare(self, tokens, depth):
        self.tokens = tokens
        self.llm.reset()
        if depth:
            self.llm.eval(tokens[:depth])
        return {}

    def _decode(self, ids, pos):
        self.llm.n_tokens = pos  # eval drops the cache from n_tokens on and appends ids there
        self.llm.eval(ids)

    def run(self, depth, n_prompt, n_gen):
        return {"seconds": time_test(self._decode, self.tokens, depth, n_prompt, n_gen)}

    def rss(self):
        return {"peak_rss": peak_rss_bytes()}


def _serve():
    child = _Child()
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = getattr(child, cmd.pop("op"))(**cmd)
        except Exception as e:  # reported to the parent, which raises LlambaError
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    _serve()
