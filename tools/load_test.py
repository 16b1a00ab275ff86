"""A load test of an OpenAI-compatible server (llamba serve, llama_cpp.server, llama-server): N concurrent streaming
clients, aggregate tokens/s and latency percentiles. See runtime/eval/load.py.

    python tools/load_test.py --url http://127.0.0.1:8080 --clients 1,4 --requests 4 --max-tokens 64
"""

import sys

from runtime.eval.load import main

if __name__ == "__main__":
    sys.exit(main())
