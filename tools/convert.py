"""Convert a Hugging Face model directory to GGUF (same as `llamba convert`).

    python tools/convert.py MODEL_DIR [-o OUT.gguf] [--outtype q4_k_m] [--force] [--dry-run]
"""

import sys

from runtime.cli import main as llamba


def main(argv=None) -> int:
    return llamba(["convert", *(sys.argv[1:] if argv is None else argv)], prog="python tools/convert.py")


if __name__ == "__main__":
    sys.exit(main())
