"""Re-quantize a GGUF file to another type or K-quant mix (same as `llamba quantize`).

    python tools/quantize.py IN.gguf OUT.gguf q4_k_m [--allow-requantize] [--force] [--dry-run]
"""

import argparse
import sys

from runtime import quantize_file
from runtime.errors import LlambaError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantize", description=__doc__.splitlines()[0])
    quantize_file.add_arguments(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LlambaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
