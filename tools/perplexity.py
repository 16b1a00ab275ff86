"""Perplexity of a model over a text file, as llama.cpp's `llama-perplexity` measures it.

    python tools/perplexity.py -m MODEL -f TEXT.txt [-c 512] [--chunks N] [-t THREADS]

Prints the running estimate after each chunk (`[1]12.3456,[2]...`) and `Final estimate: PPL = x +/- y`.
"""

import argparse
import sys

import numba

from runtime.errors import LlambaError
from runtime.llm import check_threads, resolve_model
from runtime.model import load_model
from runtime.perplexity import DEFAULT_N_CTX, text_perplexity
from runtime.tokenizer import Tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perplexity", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=None, help="GGUF path or known model name (default: the default model)")
    p.add_argument("-f", "--file", required=True, help="text file to score (UTF-8)")
    p.add_argument("-c", "--ctx-size", type=int, default=DEFAULT_N_CTX,
                   help="tokens per chunk; the second half of each is scored (default: %(default)s)")
    p.add_argument("--chunks", type=int, default=None, help="score at most this many chunks (default: all)")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all cores)")
    return p


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LlambaError(f"cannot read {path}: {e}") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        threads = check_threads(args.threads)
        if threads is not None:
            numba.set_num_threads(threads)
        text = _read_text(args.file)
        model = load_model(resolve_model(args.model), n_ctx=args.ctx_size)
        tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
        print(f"perplexity: {args.file}, chunks of {args.ctx_size} tokens", file=sys.stderr)
        result = text_perplexity(model, tokenizer, text, args.ctx_size, args.chunks,
                                 on_chunk=lambda i, ppl: print(f"[{i}]{ppl:.4f},", end="", flush=True))
        print(f"\n{result.summary()}")
        return 0
    except LlambaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
