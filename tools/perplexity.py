"""Perplexity of a model over a text file, as llama.cpp's `llama-perplexity` measures it (same as
`llamba perplexity`).

    python tools/perplexity.py -m MODEL -f TEXT.txt [-c 512] [--chunks N] [-t THREADS]

Prints the running estimate after each chunk (`[1]12.3456,[2]...`) and `Final estimate: PPL = x +/- y`.

    python tools/perplexity.py -m MODEL -f TEXT.txt --kl-divergence [--kernels int] [--kl-mode decode|batch]

compares the model on a kernel path (default int, as generation runs it: the scored half of each chunk decoded
token by token) with the float reference of the same file, and prints llama.cpp's `--kl-divergence` statistics.
"""

import sys

from runtime.cli import main as llamba


def main(argv=None) -> int:
    return llamba(["perplexity", *(sys.argv[1:] if argv is None else argv)], prog="python tools/perplexity.py")


if __name__ == "__main__":
    sys.exit(main())
