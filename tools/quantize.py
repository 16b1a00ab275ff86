"""Re-quantize a GGUF file to another type or K-quant mix (same as `llamba quantize`).

    python tools/quantize.py IN.gguf OUT.gguf q4_k_m [--allow-requantize] [--force] [--dry-run]
"""

import sys

from runtime.cli import main as llamba


def main(argv=None) -> int:
    return llamba(["quantize", *(sys.argv[1:] if argv is None else argv)], prog="python tools/quantize.py")


if __name__ == "__main__":
    sys.exit(main())
