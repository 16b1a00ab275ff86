"""The OpenAI-compatible HTTP server (same as `llamba serve`; needs `pip install -e ".[server]"`).

    python tools/serve.py -m MODEL [--host 127.0.0.1] [--port 8080] [-c N] [-t N] [-np N] [--api-key KEY]
"""

import sys

from runtime.cli import main as llamba


def main(argv=None) -> int:
    return llamba(["serve", *(sys.argv[1:] if argv is None else argv)], prog="python tools/serve.py")


if __name__ == "__main__":
    sys.exit(main())
