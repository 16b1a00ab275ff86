"""Peak memory of tools/convert.py on a random llama checkpoint of >= 1 GB (target: 3x largest tensor + 300 MB).

    python tools/convert_rss.py [--dir DIR] [--hidden 2048] [--layers 12] [--vocab 32000] [--dtype f32]
                                [--outtypes q4_k_m,f16] [--keep]

A child process builds the checkpoint as sharded safetensors, one layer per shard (so building never holds the
model in memory); then tools/convert.py converts it in one child process per output type, and each child's peak
resident set (ru_maxrss from wait4: anonymous memory plus the memory-mapped checkpoint pages it touched) is
printed next to the largest tensor (as float32, the converter's working type) and the target.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6


def llama_config(a) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
            "intermediate_size": a.intermediate, "num_hidden_layers": a.layers, "num_attention_heads": a.hidden // 128,
            "num_key_value_heads": a.hidden // 512, "vocab_size": a.vocab, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
            "torch_dtype": {"f32": "float32", "f16": "float16"}[a.dtype]}


def expected_shapes(cfg: dict) -> dict:
    """{HF tensor name: shape}, as the converter's llama layout expects them."""
    from runtime.archs import llama
    return {name: tuple(spec.shape) for name, spec in llama.hf_tensors(cfg).items()}


def write_tokenizer(d: Path):
    """A byte-level BPE trained on a few words (the converter pads its vocab to vocab_size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(d / "tokenizer.json"))


def build(d: Path, cfg: dict, dtype: str):
    """Random weights as sharded safetensors: embeddings, one shard per layer, then norm + lm_head."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    shards = {}
    for name, shape in expected_shapes(cfg).items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        key = f"layer{int(m.group(1)):03d}" if m else ("head" if "lm_head" in name or name == "model.norm.weight"
                                                       else "embed")
        shards.setdefault(key, []).append((name, shape))
    weight_map = {}
    order = sorted(shards, key=lambda k: (k != "embed", k))
    for i, entries in enumerate(shards[k] for k in order):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in entries:
            x = rng.standard_normal(shape, dtype=np.float32)  # shape
            x *= 0.02 if len(shape) > 1 else 1.0
            tensors[name] = x.astype(np.float16) if dtype == "f16" else x
            weight_map[name] = fname
        save_file(tensors, d / fname)
        del tensors
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(d)


def run_child(argv: list) -> tuple:
    """(exit code, peak RSS bytes, seconds) of a child process."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss * 1024, time.monotonic() - t0  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one, removed)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="checkpoint dtype (default: f32)")
    p.add_argument("--outtypes", default="q4_k_m,f16")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint (with --dir)")
    p.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)  # the builder child
    a = p.parse_args(argv)
    cfg = llama_config(a)
    work = a.dir or Path(tempfile.mkdtemp(prefix="convert_rss_"))
    ckpt = work / "checkpoint"
    if a.build_only:
        build(ckpt, cfg, a.dtype)
        return 0
    try:
        shapes = expected_shapes(cfg).values()
        itemsize = {"f32": 4, "f16": 2}[a.dtype]
        total = sum(int(np.prod(s)) for s in shapes) * itemsize
        largest = max(int(np.prod(s)) for s in shapes) * 4  # float32, as the converter loads it
        target = 3 * largest + 300 * MB
        if not (ckpt / "config.json").is_file():
            ckpt.mkdir(parents=True, exist_ok=True)
            rc, rss, secs = run_child([sys.executable, __file__, "--dir", str(work), "--build-only",
                                       *(f"--{k}={getattr(a, k)}" for k in ("hidden", "intermediate", "layers",
                                                                           "vocab", "dtype"))])
            if rc:
                print(f"building the checkpoint failed (exit code {rc})", file=sys.stderr)
                return 1
            print(f"built {ckpt}: {total / MB:.0f} MB {a.dtype} in {secs:.0f} s (builder peak RSS {rss / MB:.0f} MB)")
        print(f"largest tensor {largest / MB:.0f} MB as float32; target peak RSS 3x that + 300 MB = "
              f"{target / MB:.0f} MB")
        ok = True
        for outtype in a.outtypes.split(","):
            out = work / f"model-{outtype}.gguf"
            rc, rss, secs = run_child([sys.executable, str(ROOT / "tools" / "convert.py"), str(ckpt), "-o", str(out),
                                       "--outtype", outtype, "--force"])
            ok &= rc == 0 and rss < target
            size = out.stat().st_size / MB if rc == 0 else 0
            print(f"{outtype:>7}: exit {rc}, {secs:6.1f} s, output {size:7.0f} MB, "
                  f"peak RSS {rss / MB:6.0f} MB = {rss / largest:.2f}x largest tensor "
                  f"({'below' if rss < target else 'ABOVE'} target {target / MB:.0f} MB)")
            out.unlink(missing_ok=True)
        return 0 if ok else 1
    finally:
        if not a.keep and a.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
