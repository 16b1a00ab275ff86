"""Benchmarks. `python tools/bench.py kernels`: matvec throughput per weight type and kernel path;
`python tools/bench.py model`: llama-bench for a whole model (pp/tg tokens/s, see runtime/eval/bench.py).

Throughput is bytes of block data read per second (GB/s), the median over repeats, printed as a
markdown table next to the machine's streaming read bandwidth measured in the same run (a Numba prange
sum over a large array): token generation is bound by that bandwidth.
"""

import argparse
import platform
import time

import numba
import numpy as np

from quant import QMatrix
from quant.types import GGMLType, row_bytes
from runtime.eval import bench as model_bench
from runtime.eval.bandwidth import read_bandwidth

SHAPES = {"4096x4096": (4096, 4096), "qwen1.5b-ffn-up": (8960, 1536), "qwen1.5b-ffn-down": (1536, 8960)}
DEFAULT_TYPES = "Q8_0,Q4_0,Q4_1,Q5_0,Q4_K,Q5_K,Q6_K,Q2_K,Q3_K,F16"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm up (compilation, page faults)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def random_matrix(rng, qtype: GGMLType, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, row_bytes) uint8 of random blocks (normal values for the float types): speed only."""
    if qtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        dtype = {GGMLType.F32: np.float32, GGMLType.F16: np.float16, GGMLType.BF16: np.float32}[qtype]
        x = rng.standard_normal((n_rows, n_cols)).astype(dtype)
        if qtype == GGMLType.BF16:
            return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return x.view(np.uint8)
    return rng.integers(0, 256, (n_rows, row_bytes(qtype, n_cols)), dtype=np.uint8)


def bench_kernels(args):
    types = [GGMLType[t.strip().upper()] for t in args.types.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    print(f"machine: {platform.processor() or platform.machine()}, numba {numba.__version__}, "
          f"{numba.config.NUMBA_NUM_THREADS} threads available; matvec GB/s of block data, median of {args.repeats}\n")
    bw = {}
    for th in threads:
        numba.set_num_threads(th)
        bw[th] = read_bandwidth(int(args.bw_gb * 1e9), args.repeats)
    head = " | ".join(f"{p} {th}T" for th in threads for p in args.paths.split(","))
    print(f"| shape | type | MB | {head} |")
    print("|---|---|---|" + "---|" * (len(threads) * len(args.paths.split(","))))
    print(f"| stream read | - | {args.bw_gb * 1000:.0f} | " + " | ".join(
        f"{bw[th]:.1f}" for th in threads for _ in args.paths.split(",")) + " |")
    for shape in args.shapes.split(","):
        n_rows, n_cols = SHAPES[shape]
        x = rng.standard_normal(n_cols).astype(np.float32)
        for qtype in types:
            raw = random_matrix(rng, qtype, n_rows, n_cols)
            cells = []
            for th in threads:
                numba.set_num_threads(th)
                for path in args.paths.split(","):
                    m = QMatrix(raw, qtype, n_cols, path=path)
                    y = np.empty(n_rows, np.float32)
                    t = median_seconds(lambda m=m, x=x, y=y: m.matvec(x, out=y), args.repeats)
                    cells.append(f"{raw.nbytes / t / 1e9:.1f}")
            print(f"| {shape} | {qtype.name} | {raw.nbytes / 1e6:.1f} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="matvec GB/s per weight type, kernel path and thread count")
    k.add_argument("--types", default=DEFAULT_TYPES, help="comma-separated GGML types")
    k.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    k.add_argument("--paths", default="float,int", help="kernel paths: float,int")
    k.add_argument("--threads", default="1,2", help="comma-separated Numba thread counts")
    k.add_argument("--repeats", type=int, default=15)
    k.add_argument("--bw-gb", type=float, default=1.0, help="array size of the read-bandwidth probe, GB")
    k.set_defaults(run=bench_kernels)
    m = sub.add_parser("model", help="llama-bench for a model: pp/tg tok/s, --compare llama.cpp (eval/bench.py)")
    model_bench.add_arguments(m)
    m.set_defaults(run=model_bench.main)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
