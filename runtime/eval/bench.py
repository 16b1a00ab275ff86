"""A llama-bench for llamba: prompt processing (ppN) and token generation (tgN) speed in tokens/s.

Conventions of llama.cpp's llama-bench: `pp512` evaluates 512 random tokens as one batch, `tg128`
generates 128 tokens one at a time from an empty context (`tg128 @ d512`: after a 512-token prompt);
random token ids and no sampling, so neither tokenization nor sampling is timed; one warm-up run per
test is excluded, then `-r` repetitions give mean ± sd. `--compare llama.cpp` runs the same tests with
llama-cpp-python on the same file, threads and context, interleaved (A B A B ...) so machine noise hits
both. `--bandwidth` measures the streaming read bandwidth (quant/bandwidth.py: a Numba parallel sum over
a `--bw-gb` array, per thread count) and shows tg against its bound (weight bytes read per token /
bandwidth), noting when those weights fit in the CPU's last-level cache instead. Used by `llamba bench`
and `python tools/bench.py model`.

Heavy modules (Numba kernels, the model) are imported when a bench runs, so building the CLI stays light.
"""

import argparse
import contextlib
import importlib.metadata
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import gpu
from ..errors import LlambaError
from .timing import peak_rss_bytes, time_test

COMPARE_ENGINES = ("llama.cpp",)
DEPTHS = "512,2048"  # --ctx-depth without a list


@dataclass(frozen=True)
class Test:
    n_prompt: int
    n_gen: int
    depth: int = 0

    @property
    def name(self) -> str:
        name = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return f"{name} @ d{self.depth}" if self.depth else name

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen


def int_list(text: str, what: str, minimum: int = 0) -> list[int]:
    """'512,1024' -> [512, 1024] (llama-bench's comma lists), each >= minimum."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise LlambaError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if any(v < minimum for v in values):
        raise LlambaError(f"{what} values must be >= {minimum}, got {text!r}")
    return values


def plan(prompts: list[int], gens: list[int], depths: list[int]) -> list[Test]:
    """pp tests, then tg tests at each depth (0 first); a 0 in -p/-n skips that kind of test."""
    tests = [Test(p, 0) for p in prompts if p]
    tests += [Test(0, n, d) for d in [0, *[d for d in depths if d]] for n in gens if n]
    if not tests:
        raise LlambaError("no test to run: -p and -n are all 0")
    return tests


@dataclass
class ModelInfo:
    """What llama-bench's table says about the model, and the bytes a generated token reads."""

    filename: str
    desc: str  # e.g. "llama 135M Q4_1"
    size: int  # bytes of tensor data
    n_params: int
    bytes_per_token: int  # every weight once, but a single row of the token embeddings
    n_vocab: int

    @classmethod
    def of(cls, gguf, n_vocab: int) -> "ModelInfo":
        from quant import row_bytes

        from ..convert.plan import SCHEMES

        tensors = gguf.tensors.values()
        size = sum(t.nbytes for t in tensors)
        n_params = sum(t.n_elements for t in tensors)
        embd = gguf.tensors["token_embd.weight"]
        tied = "output.weight" not in gguf.tensors  # then the output matrix is the embeddings, read in full
        per_token = size - embd.nbytes + row_bytes(embd.qtype, embd.shape[-1]) + (embd.nbytes if tied else 0)
        ftypes = {s.file_type: s.name.upper() for s in SCHEMES.values()}
        dominant = max(tensors, key=lambda t: t.nbytes).qtype.name
        ftype = ftypes.get(gguf.metadata.get("general.file_type"), dominant)
        label = f"{n_params / 1e6:.0f}M" if n_params < 1e9 else f"{n_params / 1e9:.1f}B"
        n_tokens = len(gguf.metadata.get("tokenizer.ggml.tokens", ())) or n_vocab
        return cls(str(gguf.path), f"{gguf.architecture} {label} {ftype}", size, n_params, per_token,
                   min(n_vocab, n_tokens))


class LlambaEngine:
    name = "llamba"

    def __init__(self, path, n_ctx: int, threads: int, n_gpu_layers: int = 0, main_gpu: int = 0):
        from ..llm import CompileProgress
        from ..model import load_model

        self.version = importlib.metadata.version("llamba")
        self.set_threads(threads)
        t0 = time.perf_counter()
        self.model = load_model(path, n_ctx, n_gpu_layers, main_gpu)
        self.cache = self.model.new_cache()
        self.load_seconds = time.perf_counter() - t0
        # every kernel compiled (progress on stderr) or loaded now: no compilation in the timed runs or the TTFT
        self.model.warmup(progress=CompileProgress())
        t0 = time.perf_counter()
        self.model.repack()  # repacking is loading (the layers the warm-up ran are repacked already)
        self.load_seconds += time.perf_counter() - t0
        self.offload = "" if self.model.gpu is None else f"{self.model.gpu}, {self._launches()} launches per token"

    def _launches(self) -> int:
        """GPU kernels launched by one decode step."""
        from quant.kernels.cuda import target

        start = target.launches()
        self.model.forward(np.zeros(1, np.int32), 0, self.cache)
        return target.launches() - start

    def set_threads(self, n: int):
        from ..threads import check_threads, set_threads

        set_threads(check_threads(n))

    def prepare(self, tokens, depth: int):
        self.tokens = tokens
        if depth:
            self.model.forward(tokens[:depth], 0, self.cache)

    def run(self, depth: int, n_prompt: int, n_gen: int) -> float:
        return time_test(self._decode, self.tokens, depth, n_prompt, n_gen)

    def _decode(self, ids, pos: int):
        return self.model.forward(ids, pos, self.cache)

    def peak_rss(self) -> int:
        return peak_rss_bytes()

    def close(self):
        pass


@dataclass
class Result:
    engine: str
    threads: int
    test: Test
    samples: list = field(default_factory=list)  # seconds per repetition

    @property
    def ts(self) -> np.ndarray:
        return self.test.n_tokens / np.asarray(self.samples)  # tokens/s per repetition

    @property
    def mean(self) -> float:
        return float(self.ts.mean())

    @property
    def sd(self) -> float:
        return float(self.ts.std(ddof=1)) if len(self.samples) > 1 else 0.0


@dataclass
class EngineStats:
    name: str
    version: str
    load_s: float
    ttft_s: float | None = None  # first prompt right after loading (cold caches): the first pp test's warm-up
    peak_rss: int = 0
    offload: str = ""  # what runs on the GPU (-ngl), with launches per token


@dataclass
class Report:
    model: ModelInfo
    tests: list
    threads: list
    engines: list  # EngineStats
    results: list  # Result
    bandwidth: dict  # threads -> GB/s (empty without --bandwidth)
    repetitions: int
    llc_bytes: int | None = None  # the CPU's largest cache, with --bandwidth
    kernels: dict = field(default_factory=dict)  # kernel_info(): what ran llamba's integer dots and numpy's sgemm

    def result(self, engine: str, threads: int, test: Test) -> Result:
        return next(r for r in self.results if (r.engine, r.threads, r.test) == (engine, threads, test))

    def bound(self, threads: int) -> float | None:
        """tokens/s that the streaming read bandwidth allows for generation."""
        bw = self.bandwidth.get(threads)
        return bw * 1e9 / self.model.bytes_per_token if bw else None


def kernel_info() -> dict:
    """The integer kernels' instruction-set variant (quant.jit.isa) and the ones this CPU runs, and which BLAS
    numpy's sgemm (prompt batches) runs: library, version and the kernel it picked for the CPU (threadpoolctl; an
    OPENBLAS_CORETYPE in the environment pins an older one)."""
    from threadpoolctl import threadpool_info

    from quant.jit import isa

    blas = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''} kernel, "
            f"{i.get('num_threads')} threads".replace("  ", " ") for i in threadpool_info() if i["user_api"] == "blas"]
    return {"isa": isa.ISA, "isa_supported": isa.supported(), "blas": "; ".join(blas) or "none found"}


def run_bench(path, tests: list[Test], threads: list[int], repetitions: int, compare: str | None = None,
              bandwidth_gb: float = 0.0, seed: int = 0, progress=None, n_gpu_layers: int = 0,
              main_gpu: int = 0) -> Report:
    """Load the engines, run every test at every thread count (interleaved), then the bandwidth probe;
    n_gpu_layers, main_gpu: llamba's GPU offload (the peer runs on the CPU)."""
    if repetitions < 1:
        raise LlambaError(f"repetitions must be >= 1, got {repetitions}")
    if compare is not None:
        if compare not in COMPARE_ENGINES:
            raise LlambaError(f"--compare: unknown engine {compare!r} (known: {', '.join(COMPARE_ENGINES)})")
        from .llamacpp import LlamaCppEngine, check_installed

        check_installed()  # before loading anything
    n_ctx = max(t.depth + t.n_tokens for t in tests)
    engines = [LlambaEngine(path, n_ctx, threads[0], n_gpu_layers, main_gpu)]
    try:
        if compare is not None:
            engines.append(LlamaCppEngine(path, n_ctx, threads[0]))
        model = ModelInfo.of(engines[0].model.gguf, engines[0].model.n_vocab)
        stats = [EngineStats(e.name, e.version, e.load_seconds, offload=e.offload) for e in engines]
        results = _run_tests(engines, stats, model, tests, threads, repetitions, seed, progress)
        for e, s in zip(engines, stats, strict=True):
            s.peak_rss = e.peak_rss()  # before the bandwidth probe's array
    finally:
        for e in engines:
            e.close()
    bw, llc = {}, None
    if bandwidth_gb:
        from .bandwidth import last_level_cache_bytes, read_bandwidth

        for th in threads:
            engines[0].set_threads(th)
            bw[th] = read_bandwidth(int(bandwidth_gb * 1e9))
        llc = last_level_cache_bytes()
    return Report(model, tests, threads, stats, results, bw, repetitions, llc, kernel_info())


def _run_tests(engines, stats, model, tests, threads, repetitions, seed, progress) -> list[Result]:
    rng = np.random.default_rng(seed)
    results = []
    for th in threads:
        for e in engines:
            e.set_threads(th)
        for test in tests:
            tokens = rng.integers(0, model.n_vocab, test.depth + test.n_tokens, dtype=np.int64)
            rows = [Result(e.name, th, test) for e in engines]
            for e, s in zip(engines, stats, strict=True):
                e.prepare(tokens, test.depth)
                warm_up = e.run(test.depth, test.n_prompt, test.n_gen)
                if s.ttft_s is None and test.n_prompt:
                    s.ttft_s = warm_up
            for _ in range(repetitions):
                for e, r in zip(engines, rows, strict=True):  # interleaved: A B A B ...
                    r.samples.append(e.run(test.depth, test.n_prompt, test.n_gen))
            results += rows
            if progress:
                progress(" | ".join(f"{r.engine} {th}T {test.name}: {r.mean:.2f} t/s" for r in rows))
    return results


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def markdown(*reps: Report) -> str:
    """llama-bench's table: one row per model, engine, thread count and test; then each model's notes."""
    bw = any(rep.bandwidth for rep in reps)
    head = "| model | size | params | backend | threads | test | t/s |" + (" % of bw bound |" if bw else "")
    lines = [head, "|---|---:|---:|---|---:|---:|---:|" + ("---:|" if bw else "")]
    for rep in reps:
        m = rep.model
        offloaded = {e.name for e in rep.engines if e.offload}
        for r in rep.results:
            backend = f"{r.engine} {'CUDA' if r.engine in offloaded else 'CPU'}"
            cells = [m.desc, _size(m.size), _params(m.n_params), backend, str(r.threads), r.test.name,
                     f"{r.mean:.2f} ± {r.sd:.2f}"]
            if bw:
                cells.append(f"{100 * r.mean / rep.bound(r.threads):.0f}%" if r.test.n_gen and rep.bandwidth else "")
            lines.append("| " + " | ".join(cells) + " |")
    for rep in reps:
        lines += _notes(rep, len(reps) > 1)
    return "\n".join(lines)


def _notes(rep: Report, named: bool) -> list[str]:
    """The ratio table of a comparison and the lines under the table (named: prefixed with the model)."""
    m, lines = rep.model, []
    names = [e.name for e in rep.engines]
    if len(names) == 2:
        lines += ["", f"| test | threads | {names[0]} t/s | {names[1]} t/s | {names[0]} / {names[1]} |",
                  "|---:|---:|---:|---:|---:|"]
        for th in rep.threads:
            for t in rep.tests:
                a, b = rep.result(names[0], th, t), rep.result(names[1], th, t)
                lines.append(f"| {t.name} | {th} | {a.mean:.2f} | {b.mean:.2f} | {a.mean / b.mean:.2f} |")
    lines.append("")
    if named:
        lines.append(f"{m.desc} ({m.filename}):")
    for e in rep.engines:
        ttft = f"{1000 * e.ttft_s:.0f} ms" if e.ttft_s is not None else "-"
        lines.append(f"{e.name} ({e.version}): load {e.load_s:.2f} s | time to first token (first "
                     f"pp, cold) {ttft} | peak RSS {e.peak_rss / 2**20:.0f} MiB")
        if e.offload:
            lines.append(f"{e.name} offload: {e.offload}")
    for th, gbps in rep.bandwidth.items():
        lines.append(f"bandwidth {th}T: {gbps:.1f} GB/s streaming read; {m.bytes_per_token / 1e6:.1f} MB of weights "
                     f"per token -> tg bound {rep.bound(th):.1f} t/s")
    if rep.bandwidth and rep.llc_bytes and m.bytes_per_token <= rep.llc_bytes:
        lines.append(f"the weights read per token fit in the {_size(rep.llc_bytes)} last-level cache: tg can beat "
                     "the memory bound")
    if rep.kernels:
        k = rep.kernels
        lines.append(f"kernels: llamba integer dots {k['isa']} (this CPU runs {', '.join(k['isa_supported'])}); "
                     f"numpy BLAS {k['blas']}")
    lines.append(f"{rep.repetitions} repetitions after one warm-up; machine: {platform.machine()}, "
                 f"{platform.processor() or platform.system()}")
    return lines


def as_json(rep: Report) -> dict:
    m = rep.model
    results = [{
        "model_filename": m.filename, "model_type": m.desc, "model_size": m.size, "model_n_params": m.n_params,
        "backend": r.engine, "n_threads": r.threads, "n_prompt": r.test.n_prompt, "n_gen": r.test.n_gen,
        "n_depth": r.test.depth, "test": r.test.name,
        "avg_ns": int(1e9 * np.mean(r.samples)), "stddev_ns": int(1e9 * np.std(r.samples, ddof=1))
        if len(r.samples) > 1 else 0, "avg_ts": r.mean, "stddev_ts": r.sd,
        "samples_ns": [int(1e9 * s) for s in r.samples], "samples_ts": [float(v) for v in r.ts],
        "bw_bound_ts": rep.bound(r.threads) if r.test.n_gen else None,
    } for r in rep.results]
    names = [e.name for e in rep.engines]
    ratios = [{"test": t.name, "n_threads": th, "ratio": rep.result(names[0], th, t).mean
               / rep.result(names[1], th, t).mean} for th in rep.threads for t in rep.tests] if len(names) == 2 else []
    engines = [{"name": e.name, "version": e.version, "load_s": e.load_s, "ttft_s": e.ttft_s,
                "peak_rss_bytes": e.peak_rss, "offload": e.offload} for e in rep.engines]
    return {"results": results, "engines": engines, "ratios": ratios,
            "bandwidth_gbps": {str(k): v for k, v in rep.bandwidth.items()},
            "bytes_per_token": m.bytes_per_token, "llc_bytes": rep.llc_bytes, "repetitions": rep.repetitions,
            "kernels": rep.kernels}


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("-m", "--model", default=None,
                   help="GGUF paths or known model names, comma-separated: one table (default: the default model)")
    p.add_argument("-p", "--n-prompt", default="512", help="prompt lengths, comma-separated (default: %(default)s)")
    p.add_argument("-n", "--n-gen", default="128", help="generated tokens, comma-separated (default: %(default)s)")
    p.add_argument("-t", "--threads", default=None, help="thread counts, comma-separated (default: all cores)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="timed runs per test (default: %(default)s)")
    p.add_argument("-d", "--ctx-depth", nargs="?", const=DEPTHS, default="",
                   help=f"also tg after prompts of these lengths (without a list: {DEPTHS})")
    p.add_argument("--compare", choices=COMPARE_ENGINES, default=None,
                   help="run the same tests with llama-cpp-python, interleaved, and print the ratios")
    p.add_argument("--bandwidth", action="store_true", help="measure the streaming read bandwidth (per thread "
                   "count, after the tests) and show tg as a fraction of its bound")
    p.add_argument("--bw-gb", type=float, default=1.0, help="array size of the bandwidth probe, GB")
    p.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    p.add_argument("--synthetic", default=None, metavar="SHAPE", help="bench a file of this shape (llama-7b) with "
                   "random weights and -m's vocabulary, written to a temporary directory and deleted after "
                   "(runtime/eval/synthetic.py; ~3.9 GB for llama-7b): a speed workload, not a model")
    gpu.add_arguments(p)


def main(args) -> int:
    import numba

    from ..registry import resolve_model

    threads = int_list(args.threads, "-t", 1) if args.threads else [numba.config.NUMBA_NUM_THREADS]
    tests = plan(int_list(args.n_prompt, "-p"), int_list(args.n_gen, "-n"),
                 int_list(args.ctx_depth, "--ctx-depth") if args.ctx_depth else [])
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    # stdout: the table (or JSON) only; progress, compile progress and llama.cpp's messages go to stderr
    models = args.model.split(",") if args.model else [None]
    if args.synthetic and len(models) > 1:
        raise LlambaError("--synthetic takes one model (-m), whose vocabulary it borrows")
    reps = []
    with contextlib.ExitStack() as stack:
        for m in models:
            path = resolve_model(m)
            if args.synthetic:
                from .synthetic import RANDOM_NOTE, SHAPES, write_synthetic

                if args.synthetic not in SHAPES:
                    raise LlambaError(f"--synthetic: unknown shape {args.synthetic!r} (known: {', '.join(SHAPES)})")
                say(f"writing a {args.synthetic}-shaped file with {path.name}'s vocabulary: {RANDOM_NOTE}")
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llamba-synthetic-")))
                path = write_synthetic(tmp / f"{args.synthetic}.gguf", args.synthetic, path, log=say).path
            reps.append(run_bench(path, tests, threads, args.repetitions, args.compare,
                                  args.bw_gb if args.bandwidth else 0.0, progress=say,
                                  n_gpu_layers=args.n_gpu_layers, main_gpu=args.main_gpu))
    if args.json:
        print(json.dumps(as_json(reps[0]) if len(reps) == 1 else [as_json(r) for r in reps], indent=1))
    else:
        print(markdown(*reps))
    if args.synthetic:
        print(f"({args.synthetic}: {RANDOM_NOTE})")
    return 0
