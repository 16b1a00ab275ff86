"""`llamba serve`: the OpenAI-compatible HTTP server (the `server` extra: FastAPI, uvicorn).

    llamba serve -m qwen2.5-coder-0.5b-instruct -np 4 --port 8080

Binds to loopback by default; another address needs `--api-key KEY` (or `--no-api-key`, with a warning).
llama-server's option spellings where they exist.
"""

import argparse
import importlib.util
import sys

from .. import gpu
from ..cli import memory_options
from ..errors import LlambaError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("-m", "--model", default=None, metavar="MODEL", help="GGUF path or known model name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=8080, help="(default: %(default)s)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context size of each slot")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("-np", "--parallel", type=int, default=1, help="sequence slots decoded together (default: 1)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests that may wait for a slot; more are refused with 503 (default: %(default)s)")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    p.add_argument("--no-api-key", action="store_true", help="allow a non-loopback --host without a key")
    p.add_argument("--cors-origin", default=None, help="allow browser requests from this origin (default: none)")
    p.add_argument("--alias", default=None, help="model id shown by /v1/models (default: the file's name)")
    memory_options(p)
    gpu.add_arguments(p)


def check_installed():
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise LlambaError(f"llamba serve needs {', '.join(missing)}: pip install -e \".[server]\"")


def run_args(args) -> int:
    check_installed()
    if args.host not in LOOPBACK and not args.api_key:
        if not args.no_api_key:
            raise LlambaError(f"--host {args.host} exposes the server beyond this machine: give --api-key KEY "
                              "(or --no-api-key to serve without one)")
        print(f"warning: serving on {args.host} without an API key: anyone who can reach it can use it",
              file=sys.stderr)
    if args.parallel < 1 or args.max_queue < 0:
        raise LlambaError("-np must be >= 1 and --max-queue >= 0")
    import uvicorn

    from ..llm import LLM
    from .app import create_app
    from .engine import Engine

    llm = LLM(args.model, n_ctx=args.ctx_size, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
              main_gpu=args.main_gpu, type_k=args.cache_type_k, type_v=args.cache_type_v, repack=args.repack)
    engine = Engine(llm, args.parallel, args.max_queue)
    app = create_app(engine, api_key=args.api_key, cors_origin=args.cors_origin, model_name=args.alias)
    if llm.model.gpu is not None:
        print(f"llamba: offloaded {llm.model.gpu}", file=sys.stderr)
    print(f"llamba: serving {llm.path.name} on http://{args.host}:{args.port} ({args.parallel} slots)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
