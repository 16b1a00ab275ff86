"""Write a model-shaped GGUF with random but finite weights: a speed workload, not a model (runtime/eval/synthetic.py).

    python tools/synthetic.py /tmp/llama-7b-q4_k_m.gguf [--shape llama-7b] [--vocab-from MODEL] [--mix q4_k_m]

Llama-2-7B's shape (4096 wide, 32 layers, 32 heads, FFN 11008) in llama.cpp's Q4_K_M mix, ~3.9 GB with SmolLM2's
vocabulary; `llamba bench --synthetic llama-7b` writes one to a temporary directory, benchmarks it and deletes it.
"""

import argparse
import sys

from runtime.eval.synthetic import RANDOM_NOTE, SHAPES, write_synthetic
from runtime.registry import resolve_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the GGUF file to write")
    p.add_argument("--shape", choices=list(SHAPES), default="llama-7b")
    p.add_argument("--vocab-from", default="smollm2-135m-instruct",
                   help="GGUF path or known model whose vocabulary and tokenizer are copied (default: %(default)s)")
    p.add_argument("--mix", default="q4_k_m", help="type or K-quant mix (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = p.parse_args(argv)
    print(f"note: {RANDOM_NOTE}", file=sys.stderr)
    write_synthetic(args.out, args.shape, resolve_model(args.vocab_from), mix=args.mix, seed=args.seed,
                    force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
