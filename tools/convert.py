"""Convert a Hugging Face model directory to GGUF (same as `llamba convert`).

    python tools/convert.py MODEL_DIR [-o OUT.gguf] [--outtype q4_k_m] [--force] [--dry-run]
"""

import argparse
import sys

from runtime import convert
from runtime.errors import LlambaError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert", description=__doc__.splitlines()[0])
    convert.add_arguments(p)
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
