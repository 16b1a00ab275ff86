"""Perplexity of a model over a text, measured the way llama.cpp's `llama-perplexity` does.

The whole text is tokenized once (with BOS where the model adds one) and cut into non-overlapping chunks
of n_ctx tokens (a partial last chunk is dropped). Each chunk runs as one batch from position 0, its
first token replaced by BOS when the model adds one. Only the second half of a chunk is scored, so every
scored token sees at least n_ctx/2 tokens of context: the logits at positions first..n_ctx-2
(first = n_ctx/2) predict tokens first+1..n_ctx-1. Perplexity = exp(mean NLL) over all scored tokens,
with llama.cpp's standard error ppl * sqrt(var(NLL) / (count - 1)).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ContextOverflowError, LlambaError

DEFAULT_N_CTX = 512
_ROWS = 64  # logit rows converted to float64 at a time: bounds memory for large vocabularies


@dataclass
class PerplexityResult:
    ppl: float
    stderr: float  # standard error of ppl (nan with fewer than two scored tokens)
    n_chunks: int
    n_ctx: int
    nll: np.ndarray  # (n_scored,) float64 negative log-likelihood of every scored token, in text order
    running: list  # running perplexity estimate after each chunk

    def summary(self) -> str:
        return f"Final estimate: PPL = {self.ppl:.4f} +/- {self.stderr:.5f}"


def chunk_tokens(tokens, n_ctx: int, n_chunks: int | None = None, bos_id: int | None = None) -> np.ndarray:
    """(n_chunks, n_ctx) int64 chunks of `tokens`; with bos_id, each chunk's first token is replaced by it."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if not isinstance(n_ctx, (int, np.integer)) or n_ctx < 4:
        raise LlambaError(f"n_ctx must be an integer >= 4, got {n_ctx!r}")
    available = tokens.size // n_ctx
    if available == 0:
        raise LlambaError(f"the text has {tokens.size} tokens; perplexity with n_ctx={n_ctx} needs at least {n_ctx}")
    if n_chunks is not None and (not isinstance(n_chunks, (int, np.integer)) or n_chunks <= 0):
        raise LlambaError(f"n_chunks must be a positive integer, got {n_chunks!r}")
    n = available if n_chunks is None else min(n_chunks, available)
    chunks = tokens[:n * n_ctx].reshape(n, n_ctx).copy()  # (n_chunks, n_ctx)
    if bos_id is not None:
        chunks[:, 0] = bos_id
    return chunks


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64: logits (m, n_vocab), targets (m,) -> (m,)."""
    out = np.empty(len(targets), np.float64)
    for r in range(0, len(targets), _ROWS):
        x = logits[r:r + _ROWS].astype(np.float64)  # (rows, n_vocab)
        x -= x.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(x).sum(axis=1))  # (rows,)
        out[r:r + _ROWS] = log_z - x[np.arange(len(x)), targets[r:r + _ROWS]]
    return out


def scored_positions(n_ctx: int) -> slice:
    """Positions of a chunk whose logits are scored (each predicts the token after it)."""
    return slice(n_ctx // 2, n_ctx - 1)


def _ppl_and_stderr(nll: np.ndarray) -> tuple:
    mean = float(nll.mean())
    ppl = math.exp(mean)
    var = float((nll * nll).mean()) - mean * mean  # llama.cpp: E[nll^2] - E[nll]^2
    stderr = ppl * math.sqrt(var / (nll.size - 1)) if nll.size > 1 and var > 0 else math.nan
    return ppl, stderr


def perplexity(model, tokens, n_ctx: int = DEFAULT_N_CTX, n_chunks: int | None = None, bos_id: int | None = None,
               on_chunk: Callable | None = None) -> PerplexityResult:
    """Perplexity of `model` (runtime.model.Model) over `tokens` (the whole text, already tokenized).

    bos_id: the BOS id if the model adds one (each chunk then starts with it), else None.
    on_chunk(i, running_ppl) is called after chunk i (1-based), as llama.cpp prints `[i]ppl,`."""
    if n_ctx > model.n_ctx:
        raise ContextOverflowError(f"perplexity chunks of {n_ctx} tokens do not fit the model's context of "
                                   f"{model.n_ctx} tokens (load the model with n_ctx >= {n_ctx})")
    chunks = chunk_tokens(tokens, n_ctx, n_chunks, bos_id)  # (n_chunks, n_ctx)
    scored = scored_positions(n_ctx)
    originals = np.asarray(tokens, dtype=np.int64)
    nll, running, nll_sum = [], [], 0.0
    for i, chunk in enumerate(chunks):
        logits = model.forward(chunk, 0, all_logits=True)  # (n_ctx, n_vocab)
        targets = originals[i * n_ctx + scored.start + 1:(i + 1) * n_ctx]  # (n_ctx - 1 - first,)
        nll.append(token_nll(logits[scored], targets))
        nll_sum += float(nll[-1].sum())
        running.append(math.exp(nll_sum / ((i + 1) * targets.size)))
        if on_chunk is not None:
            on_chunk(i + 1, running[-1])
    all_nll = np.concatenate(nll)
    ppl, stderr = _ppl_and_stderr(all_nll)
    return PerplexityResult(ppl, stderr, len(chunks), n_ctx, all_nll, running)


def text_perplexity(model, tokenizer, text: str, n_ctx: int = DEFAULT_N_CTX, n_chunks: int | None = None,
                    on_chunk: Callable | None = None) -> PerplexityResult:
    """Tokenize `text` as llama.cpp does (model's BOS rule, control-token text left as text) and measure it."""
    tokens = tokenizer.encode(text, special=False)
    return perplexity(model, tokens, n_ctx, n_chunks, tokenizer.bos_id if tokenizer.add_bos else None, on_chunk)


# ---- `llamba perplexity` / tools/perplexity.py ----------------------------------------------------------------

def add_arguments(p):
    p.add_argument("-m", "--model", default=None, help="GGUF path or known model name (default: the default model)")
    p.add_argument("-f", "--file", required=True, help="text file to score (UTF-8)")
    p.add_argument("-c", "--ctx-size", type=int, default=DEFAULT_N_CTX,
                   help="tokens per chunk; the second half of each is scored (default: %(default)s)")
    p.add_argument("--chunks", type=int, default=None, help="score at most this many chunks (default: all)")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all cores)")


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LlambaError(f"cannot read {path}: {e}") from None


def run_args(args) -> int:
    """Print the running estimate after each chunk (`[1]12.3456,[2]...`) and `Final estimate: PPL = x +/- y`."""
    import sys

    from ..model import load_model
    from ..registry import resolve_model
    from ..threads import check_threads, set_threads
    from ..tokenizer import Tokenizer

    threads = check_threads(args.threads)
    if threads is not None:
        set_threads(threads)
    text = _read_text(args.file)
    model = load_model(resolve_model(args.model), n_ctx=args.ctx_size)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    print(f"perplexity: {args.file}, chunks of {args.ctx_size} tokens", file=sys.stderr)
    result = text_perplexity(model, tokenizer, text, args.ctx_size, args.chunks,
                             on_chunk=lambda i, ppl: print(f"[{i}]{ppl:.4f},", end="", flush=True))
    print(f"\n{result.summary()}")
    return 0
