"""The `llamba` command: run, chat, pull, list here (llama.cpp option spellings), plus the commands
other modules provide (convert, quantize, bench, perplexity, serve).

A command here is a `_cmd_*` function plus an `_add_*` parser builder listed in COMMANDS. A command from
another module is an entry in PLUGINS: the module's `add_arguments(parser)` and the function that runs
the parsed args; that module is imported only when its command runs, so `llamba list` starts fast.
Every LlambaError ends the program with a one-line `error: ...` on stderr and exit code 1.
"""

import argparse
import importlib
import os
import sys
import warnings

from . import gpu, registry
from .errors import LlambaError

DEFAULT_MAX_TOKENS = 256


def _model_options(p: argparse.ArgumentParser):
    p.add_argument("-m", "--model", default=None, metavar="MODEL",
                   help=f"GGUF path or known model name (default: {registry.DEFAULT_MODEL})")
    p.add_argument("-c", "--ctx-size", type=int, default=None,
                   help="context size in tokens (default: the model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all cores)")
    memory_options(p)
    gpu.add_arguments(p)


def memory_options(p: argparse.ArgumentParser):
    """-ctk / -ctv and -nr, llama.cpp's spellings, for every command that runs generations."""
    for short, name, what in (("-ctk", "k", "keys"), ("-ctv", "v", "values")):
        p.add_argument(short, f"--cache-type-{name}", choices=("f16", "f32", "q8_0"), default="f16",
                       help=f"KV cache element type of the {what} (default: %(default)s)")
    p.add_argument("-nr", "--no-repack", dest="repack", action="store_false",
                   help="keep every weight memory-mapped instead of interleaving Q4_K / Q6_K matrices into memory "
                        "for the faster 16-row kernels")


def _sampling_options(p: argparse.ArgumentParser):
    p.add_argument("-n", "--n-predict", type=int, default=DEFAULT_MAX_TOKENS,
                   help="tokens to generate, -1 = until end of generation or full context (default: %(default)s)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature, <= 0 is greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=40, help="0 disables (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="1.0 disables (default: %(default)s)")
    p.add_argument("--min-p", type=float, default=0.05, help="0.0 disables (default: %(default)s)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="1.0 disables (default: %(default)s)")
    p.add_argument("--repeat-last-n", type=int, default=64, help="-1 = whole history (default: %(default)s)")
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("-s", "--seed", type=int, default=None, help="RNG seed (default: random)")
    p.add_argument("-r", "--reverse-prompt", action="append", default=[], metavar="STOP",
                   help="stop when this text is generated (repeatable)")
    p.add_argument("-sp", "--special", action="store_true",
                   help="print special tokens (e.g. <|im_end|>, <start_of_image>) as text (default: left out)")


def _sampling_params(args):
    from .sampling import SamplingParams
    try:
        return SamplingParams(
            temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
            frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
            seed=None if args.seed is None or args.seed < 0 else args.seed)
    except ValueError as e:
        raise LlambaError(str(e)) from None


def _load(args):
    from .llm import LLM  # imported lazily: `llamba list`/`pull` start without numba
    llm = LLM(args.model, n_ctx=args.ctx_size, n_threads=args.threads, special=args.special,
              n_gpu_layers=args.n_gpu_layers, main_gpu=args.main_gpu, type_k=args.cache_type_k,
              type_v=args.cache_type_v, repack=args.repack)
    if llm.model.gpu is not None:
        print(f"llamba: offloaded {llm.model.gpu}", file=sys.stderr)
    return llm


def _summary(llm) -> str:
    """The stats line; speeds exclude load, warm-up and any kernel compilation (timed apart)."""
    s = llm.last_stats
    w = llm.warmup_seconds
    warm = f"compiled kernels {w:.1f} s" if llm.kernels_compiled else f"warm-up {w:.2f} s"
    late = f" (+{s.compile_seconds:.1f} s compiling, not counted)" if s.compile_seconds >= 0.05 else ""
    return (f"load {llm.load_seconds:.2f} s, {warm} | prompt {s.n_prompt} tokens, {s.prompt_tps:.1f} tok/s | "
            f"generation {s.n_generated} tokens, {s.generate_tps:.1f} tok/s{late} | stop: {s.stop_reason}")


def _emit(stream, pieces: list):
    """Print pieces as they come, collecting them in `pieces` (kept if interrupted)."""
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
        pieces.append(piece)


def _add_run(sub):
    p = sub.add_parser("run", help="complete a prompt, streaming to stdout")
    _model_options(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", help="prompt text (default: read stdin)")
    src.add_argument("-f", "--file", help="read the prompt from a file")
    _sampling_options(p)
    p.set_defaults(func=_cmd_run)


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise LlambaError(f"cannot read prompt file {args.file}: {e}") from None
    if sys.stdin is None or sys.stdin.isatty():  # None: stdin closed (`<&-`)
        raise LlambaError("no prompt: pass -p PROMPT, -f FILE or pipe text on stdin")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as e:
        raise LlambaError(f"the prompt on stdin is not valid UTF-8: {e}") from None


def _cmd_run(args) -> int:
    prompt = _read_prompt(args)
    params = _sampling_params(args)
    llm = _load(args)
    _emit(llm.stream(prompt, args.n_predict, stop=args.reverse_prompt, sampling=params), [])
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(_summary(llm), file=sys.stderr)
    return 0


def _add_chat(sub):
    p = sub.add_parser("chat", help="interactive chat on stdin/stdout (works with piped input)")
    _model_options(p)
    p.add_argument("-sys", "--system-prompt", default=None, help="system message opening the conversation")
    _sampling_options(p)
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args) -> int:
    from .llm import NoChatTemplateWarning

    params = _sampling_params(args)
    llm = _load(args)
    if not llm.tokenizer.chat_template:
        warnings.simplefilter("ignore", NoChatTemplateWarning)  # said once here, in the CLI's words
        print(f"warning: {llm.path.name} has no chat template, so it is probably a base (not instruction-tuned) "
              "model: replies use ChatML, which it may not follow; try `llamba run -p ...`", file=sys.stderr)
    if sys.stdin is None:  # stdin closed (`<&-`): nothing to chat about
        return 0
    interactive = sys.stdin.isatty()
    history = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    if interactive:
        print(f"chatting with {llm.path.name}; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError as e:
            raise LlambaError(f"the message on stdin is not valid UTF-8: {e}") from None
        if not line or (interactive and not line.strip()):
            return 0
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        _drop_old_turns(llm, history)
        pieces = []
        try:
            _emit(llm.chat(history, stream=True, max_tokens=args.n_predict, stop=args.reverse_prompt,
                           sampling=params), pieces)
        except KeyboardInterrupt:  # interactive Ctrl-C ends the reply, not the chat
            if not interactive:
                raise
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(pieces)})
        if interactive:
            print(_summary(llm), file=sys.stderr)


def _drop_old_turns(llm, history: list):
    """Forget the oldest exchanges (the system message stays) until the chat prompt fits the context."""
    first = 1 if history[0]["role"] == "system" else 0
    while len(history) - first > 1 and len(llm.tokenize(llm.chat_prompt(history))) >= llm.n_ctx:
        del history[first:first + 2]


def _add_pull(sub):
    p = sub.add_parser("pull", help="download a known model into the cache")
    p.add_argument("name", help="model name (see `llamba list`)")
    p.add_argument("--force", action="store_true", help="download again even when the cached file checks out")
    p.set_defaults(func=_cmd_pull)


def _cmd_pull(args) -> int:
    print(registry.fetch(args.name, force=args.force, full=True))  # a cached file is hashed again
    return 0


def _add_list(sub):
    p = sub.add_parser("list", help="known models, cached or not")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args) -> int:
    cached = dict(registry.cached())
    print(f"{'NAME':<34} {'KIND':<8} {'SIZE':>9}  STATUS")
    for name, m in registry.MODELS.items():
        path = cached.get(m)
        state = registry.verify(m, path, rehash=False) if path else "missing"
        status = {"ok": f"cached  {path}", "missing": f"not cached (llamba pull {name})",
                  "changed": f"cached, changed since it was verified (checked at next use)  {path}",
                  "damaged": f"DAMAGED (llamba pull --force {name})  {path}"}[state]
        default = " (default)" if name == registry.DEFAULT_MODEL else ""
        print(f"{name + default:<34} {m.kind:<8} {m.size / 1e6:>6.1f} MB  {status}")
    print("base: a pretrained model that continues text (`llamba run`); instruct: tuned to follow a chat template "
          "(`llamba chat`)")
    return 0


COMMANDS = [_add_run, _add_chat, _add_pull, _add_list]
# command -> (module, its function that runs the parsed args, help)
PLUGINS = {
    "convert": ("runtime.convert.hf_to_gguf", "run_args", "convert a Hugging Face model directory to GGUF"),
    "quantize": ("runtime.convert.requantize", "run_args", "re-quantize a GGUF file to another type or K-quant mix"),
    "bench": ("runtime.eval.bench", "main", "prompt processing and generation speed (llama-bench style)"),
    "perplexity": ("runtime.eval.perplexity", "run_args", "perplexity over a text file (llama.cpp's method)"),
    "serve": ("runtime.server", "run_args", "an OpenAI-compatible HTTP server (the `server` extra)"),
}


def build_parser(command: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser; the options of a plugin command are loaded only when it is `command`. `prog`: the name the
    command's usage and errors show (a tools/ script's own), instead of `llamba COMMAND`."""
    parser = argparse.ArgumentParser(prog="llamba", description="CPU-first quantized LLM inference (GGUF models)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    for name, (module_name, entry, help_text) in PLUGINS.items():
        p = sub.add_parser(name, help=help_text, **({"prog": prog} if prog and name == command else {}))
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(func=getattr(module, entry))
    return parser


def main(argv=None, prog: str | None = None) -> int:
    """`llamba` with `argv`; `prog` names a tools/ script that runs one plugin command (see build_parser)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(next((a for a in argv if not a.startswith("-")), None), prog).parse_args(argv)
    try:
        return args.func(args)
    except LlambaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
