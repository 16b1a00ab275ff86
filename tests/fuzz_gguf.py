"""A seeded, time-bounded GGUF fuzzer: mutate tiny_gguf's file, load it and generate 2 tokens; every outcome must be
success or a LlambaError. Run by tests/test_hardening.py in a child process (memory-limited), or by hand for longer:

    PYTHONPATH=. python tests/fuzz_gguf.py --seed 1 --seconds 600

Prints one JSON line: counts per outcome and per mutation kind, peak RSS, and the failures (anything but success
or LlambaError: another exception, a hang past --hang seconds, or a blow-up past the memory limit).
"""

import argparse
import json
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).parent))
import tiny_gguf  # noqa: E402

from runtime import LLM, LlambaError  # noqa: E402
from runtime.eval.timing import peak_rss_bytes  # noqa: E402


class Hang(Exception):
    pass


def _fields(path) -> list:
    """(byte offset, dtype) of every numeric part of the file's header: counts, string lengths, value types,
    metadata values, tensor dims, types and offsets."""
    reader = GGUFReader(path)
    base = reader.data.__array_interface__["data"][0]
    parts = []
    for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        for part in field.parts:
            if part.dtype != np.uint8 and part.size:  # uint8 parts are string bytes (or u8 values: few)
                start = part.__array_interface__["data"][0] - base
                dtype = np.dtype(np.uint8) if part.dtype.kind == "b" else part.dtype  # a BOOL: any byte
                parts += [(start + i * dtype.itemsize, dtype) for i in range(min(part.size, 4))]
    return parts


def _interesting(dtype: np.dtype, rng: random.Random):
    if dtype.kind == "f":
        return rng.choice([np.nan, np.inf, -np.inf, -1.0, 0.0, 1e30, 1e-30])
    info = np.iinfo(dtype)
    small = rng.randrange(0, min(info.max, 1 << 16) + 1)
    return rng.choice([0, 1, 2, 3, info.max, info.max - 1, info.max // 2 + 1, small,
                       *([-1, info.min] if info.min < 0 else [])])


def mutate(base: bytes, fields: list, header_end: int, rng: random.Random) -> tuple:
    """(kind, mutated bytes)."""
    blob = bytearray(base)
    kind = rng.choice(["field", "field", "flip_header", "flip_any", "truncate"])
    if kind == "field":
        for _ in range(rng.randint(1, 3)):
            at, dtype = rng.choice(fields)
            blob[at:at + dtype.itemsize] = np.array(_interesting(dtype, rng), dtype).tobytes()
    elif kind == "truncate":
        del blob[rng.randrange(len(blob)):]
    else:
        end = header_end if kind == "flip_header" else len(blob)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(end)] = rng.randrange(256)
    return kind, bytes(blob)


def run_one(path) -> None:
    llm = LLM(path, warmup=False)
    llm.generate("the", max_tokens=2, temperature=0)
    llm.generate("he t", max_tokens=2, temperature=0.8, seed=1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hang", type=int, default=20, help="seconds one case may take")
    ap.add_argument("--memory-gib", type=float, default=3.0, help="RLIMIT_DATA of this process")
    args = ap.parse_args(argv)
    limit = int(args.memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    warnings.simplefilter("ignore")

    def alarm(*_):
        raise Hang(f"a case ran longer than {args.hang} s")

    signal.signal(signal.SIGALRM, alarm)
    rng = random.Random(args.seed)
    counts, kinds, failures = {"ok": 0, "error": 0}, {}, []
    with tempfile.TemporaryDirectory() as d:
        seed_path = tiny_gguf.write(Path(d) / "seed.gguf")
        run_one(seed_path)  # the unmutated file works (and the kernels are compiled before the clock starts)
        base, fields = seed_path.read_bytes(), _fields(seed_path)
        header_end = GGUFReader(seed_path).data_offset
        path = Path(d) / "case.gguf"
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            kind, blob = mutate(base, fields, header_end, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            path.write_bytes(blob)
            signal.alarm(args.hang)
            try:
                run_one(path)
                counts["ok"] += 1
            except LlambaError:
                counts["error"] += 1
            except BaseException as e:  # noqa: BLE001 (the point: anything else is a finding)
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures.append({"kind": kind, "error": f"{type(e).__name__}: {e}"[:300],
                                 "trace": traceback.format_exc()[-1500:]})
            finally:
                signal.alarm(0)
    peak = peak_rss_bytes()  # VmHWM: ru_maxrss would carry the forking parent's peak over exec
    return {"seed": args.seed, "cases": sum(kinds.values()), "counts": counts, "kinds": kinds,
            "peak_rss_mib": round(peak / 2**20), "failures": failures}


if __name__ == "__main__":
    print(json.dumps(main()))
