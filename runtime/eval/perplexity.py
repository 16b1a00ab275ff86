"""Perplexity of a model over a text, measured the way llama.cpp's `llama-perplexity` does.

The whole text is tokenized once (with BOS where the model adds one) and cut into non-overlapping chunks
of n_ctx tokens (a partial last chunk is dropped). Each chunk runs as one batch from position 0, its
first token replaced by BOS when the model adds one. Only the second half of a chunk is scored, so every
scored token sees at least n_ctx/2 tokens of context: the logits at positions first..n_ctx-2
(first = n_ctx/2) predict tokens first+1..n_ctx-1. Perplexity = exp(mean NLL) over all scored tokens,
with llama.cpp's standard error ppl * sqrt(var(NLL) / (count - 1)).

`--kl-divergence` (kl_divergence below) compares, over the same scored tokens, the model on the kernel path
being measured (the integer path by default) with the float reference of the same file: the float kernels
(weights decoded exactly against float32 activations). It reports what llama.cpp's `--kl-divergence` reports:
KL(reference || measured) per token with its mean, percentiles and maximum, the probability of the right
token under both (delta p), how often both put the same token on top, and both perplexities.

A batch of >= Model.sgemm_tokens tokens is multiplied by sgemm over dequantized tiles on either
path, so scoring a chunk as one batch (plain perplexity) would compare float math with float math. The
measured model therefore runs each chunk as generation does (`decode`, the default): its first n_ctx/2 + 1
tokens as one prompt batch (whose last position is the first scored one), then every further position alone,
token by token over the KV cache (the matrix-vector kernels of the decode loop). The reference runs each chunk
as one batch. `batch` mode runs the measured model as one batch too (what plain perplexity measures).
"""

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import gpu
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


def _check_fits(model, n_ctx: int) -> None:
    if n_ctx > model.n_ctx:
        raise ContextOverflowError(f"perplexity chunks of {n_ctx} tokens do not fit the model's context of "
                                   f"{model.n_ctx} tokens (load the model with n_ctx >= {n_ctx})")


def _mean_err(x: np.ndarray) -> tuple:
    """(mean, standard error of the mean) as llama.cpp computes them: sqrt((E[x^2] - E[x]^2) / (n - 1))."""
    mean = float(x.mean())
    var = float((x * x).mean()) - mean * mean
    return mean, math.sqrt(max(var, 0.0) / (x.size - 1)) if x.size > 1 else math.nan


def _ppl_and_stderr(nll: np.ndarray) -> tuple:
    """(perplexity, its standard error: ppl times the NLL mean's; nan where that is 0 or undefined)."""
    mean, err = _mean_err(nll)
    ppl = math.exp(mean)
    return ppl, ppl * err if err > 0 else math.nan


def perplexity(model, tokens, n_ctx: int = DEFAULT_N_CTX, n_chunks: int | None = None, bos_id: int | None = None,
               on_chunk: Callable | None = None) -> PerplexityResult:
    """Perplexity of `model` (runtime.model.Model) over `tokens` (the whole text, already tokenized).

    bos_id: the BOS id if the model adds one (each chunk then starts with it), else None.
    on_chunk(i, running_ppl) is called after chunk i (1-based), as llama.cpp prints `[i]ppl,`."""
    _check_fits(model, n_ctx)
    chunks = chunk_tokens(tokens, n_ctx, n_chunks, bos_id)  # (n_chunks, n_ctx)
    scored = scored_positions(n_ctx)
    originals = np.asarray(tokens, dtype=np.int64)
    nll, running, nll_sum = [], [], 0.0
    cache = model.new_cache(n_ctx)
    for i, chunk in enumerate(chunks):
        logits = model.forward(chunk, 0, cache, all_logits=True)  # (n_ctx, n_vocab)
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
    tokens, bos_id = text_tokens(tokenizer, text)
    return perplexity(model, tokens, n_ctx, n_chunks, bos_id, on_chunk)


def text_tokens(tokenizer, text: str) -> tuple:
    """(tokens, bos_id) of `text` as llama.cpp's perplexity reads it: the model's BOS rule (bos_id None when it adds
    none), control-token text left as text."""
    return tokenizer.encode(text, special=False), tokenizer.bos_id if tokenizer.add_bos else None


# ---- KL divergence against the float reference (llama.cpp's --kl-divergence) ------------------------------------

KL_MODES = ("decode", "batch")
_PCTS = (99.9, 99.0, 95.0, 90.0)  # llama.cpp's upper percentiles (and 10, 5, 1, 0.1 below the median)


def token_kld(logits: np.ndarray, ref_logits: np.ndarray, targets: np.ndarray) -> tuple:
    """Per row, in float64: (KL(softmax(ref) || softmax(logits)), NLL of target under logits, NLL under ref,
    p(target) under logits, p(target) under ref, whether both argmaxes agree). (m, n_vocab) x2, (m,) -> 6 x (m,)."""
    m = len(targets)
    out = [np.empty(m, np.float64) for _ in range(5)] + [np.empty(m, bool)]
    for r in range(0, m, _ROWS):
        rows = np.arange(min(_ROWS, m - r))
        t = targets[r:r + _ROWS]
        lq = logits[r:r + _ROWS].astype(np.float64)  # (rows, n_vocab)
        lb = ref_logits[r:r + _ROWS].astype(np.float64)
        lq -= lq.max(axis=1, keepdims=True)
        lb -= lb.max(axis=1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))  # log softmax
        lb -= np.log(np.exp(lb).sum(axis=1, keepdims=True))
        pb = np.exp(lb)
        out[0][r:r + _ROWS] = (pb * (lb - lq)).sum(axis=1)
        out[1][r:r + _ROWS], out[2][r:r + _ROWS] = -lq[rows, t], -lb[rows, t]
        out[3][r:r + _ROWS], out[4][r:r + _ROWS] = np.exp(lq[rows, t]), pb[rows, t]
        out[5][r:r + _ROWS] = lq.argmax(axis=1) == lb.argmax(axis=1)
    return tuple(out)


@dataclass
class KLDResult:
    n_ctx: int
    n_chunks: int
    measured: str  # what was measured against what, in words
    kld: np.ndarray  # (n_scored,) float64 KL(reference || measured) per scored token, in text order
    nll: np.ndarray  # (n_scored,) NLL of the right token, measured model
    nll_base: np.ndarray  # (n_scored,) the same under the reference
    p: np.ndarray  # (n_scored,) probability of the right token, measured model
    p_base: np.ndarray  # (n_scored,) the same under the reference
    same_top: np.ndarray  # (n_scored,) bool: both models' most probable token is the same

    @property
    def ppl(self) -> float:
        return math.exp(float(self.nll.mean()))

    @property
    def ppl_base(self) -> float:
        return math.exp(float(self.nll_base.mean()))

    @property
    def mean_kld(self) -> tuple:
        return _mean_err(self.kld)

    @property
    def same_top_rate(self) -> tuple:
        """(fraction of tokens whose top-1 agrees, its standard error)."""
        f, n = float(self.same_top.mean()), self.same_top.size
        return f, math.sqrt(f * (1 - f) / (n - 1)) if n > 1 else math.nan

    @property
    def rms_dp(self) -> tuple:
        """(RMS of delta p = p - p_base, its standard error), as fractions (llama.cpp prints percent)."""
        dp = self.p - self.p_base
        ms, ms_err = _mean_err(dp * dp)
        rms = math.sqrt(ms)
        return rms, (0.5 * ms_err / rms if rms > 0 else 0.0)

    def chunk_line(self) -> str:
        """llama.cpp's running line after a chunk: PPL, ln(PPL/PPL_base), mean KLD, RMS dp, same top p so far."""
        ppl_err = self.ppl * _mean_err(self.nll)[1]
        lr, lr_err = _mean_err(self.nll - self.nll_base)
        k, k_err = self.mean_kld
        dp, dp_err = self.rms_dp
        top, top_err = self.same_top_rate
        return (f"{self.n_chunks:4d} {self.ppl:12.4f} ± {ppl_err:9.4f} {lr:12.5f} ± {lr_err:9.5f} "
                f"{k:12.5f} ± {k_err:9.5f} {100 * dp:9.3f} ± {100 * dp_err:6.3f} % "
                f"{100 * top:9.3f} ± {100 * top_err:6.3f} %")

    HEADER = ("chunk             PPL          ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS"
              "            Same top p")

    def report(self) -> str:
        """llama.cpp's three blocks of statistics (perplexity, KL divergence, token probability)."""
        q, b, n = self.nll, self.nll_base, self.kld.size
        ppl, ppl_b = self.ppl, self.ppl_base
        (mq, eq), (mb, eb) = _mean_err(q), _mean_err(b)
        lr, lr_err = _mean_err(q - b)
        cov = float(((q - mq) * (b - mb)).mean()) / (n - 1) if n > 1 else math.nan  # covariance of the two means
        diff_err = math.sqrt(max(ppl * ppl * eq * eq + ppl_b * ppl_b * eb * eb - 2 * ppl * ppl_b * cov, 0.0))
        corr = float(np.corrcoef(q, b)[0, 1]) if n > 1 else math.nan
        k, k_err = self.mean_kld
        dp = self.p - self.p_base
        dp_mean, dp_err = _mean_err(dp)
        rms, rms_err = self.rms_dp
        top, top_err = self.same_top_rate

        def pct(x, what, fmt):
            rows = [f"Maximum {what}: {fmt(x.max())}"]
            rows += [f"{p:4.1f}%   {what}: {fmt(np.percentile(x, p))}" for p in _PCTS]
            rows += [f"Median  {what}: {fmt(np.median(x))}"]
            rows += [f"{p:4.1f}%   {what}: {fmt(np.percentile(x, p))}" for p in (10.0, 5.0, 1.0, 0.1)]
            return rows + [f"Minimum {what}: {fmt(x.min())}"]

        lines = [
            f"{n} scored tokens in {self.n_chunks} chunks of {self.n_ctx}",
            "",
            "====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {ppl:10.6f} ± {ppl * eq:10.6f}",
            f"Mean PPL(base)                : {ppl_b:10.6f} ± {ppl_b * eb:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * corr:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {lr:10.6f} ± {lr_err:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {math.exp(lr):10.6f} ± {math.exp(lr) * lr_err:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {ppl - ppl_b:10.6f} ± {diff_err:10.6f}",
            "",
            "====== KL divergence statistics ======",
            f"Mean    KLD: {k:10.6f} ± {k_err:10.6f}",
            *pct(self.kld, "KLD", lambda v: f"{v:10.6f}"),
            "",
            "====== Token probability statistics ======",
            f"Mean    Δp: {100 * dp_mean:6.3f} ± {100 * dp_err:5.3f} %",
            *pct(dp, "Δp", lambda v: f"{100 * v:6.3f}%"),
            f"RMS Δp    : {100 * rms:6.3f} ± {100 * rms_err:5.3f} %",
            f"Same top p: {100 * top:6.3f} ± {100 * top_err:5.3f} %",
        ]
        return "\n".join(lines)


def _measured_logits(model, cache, chunk: np.ndarray, first: int, mode: str) -> np.ndarray:
    """Logits (n_ctx - 1 - first, n_vocab) at the scored positions first..n_ctx-2 of `chunk`, run by `model` over
    `cache` as generation runs a prompt and its continuation (decode) or as one batch (batch)."""
    if mode == "batch":
        return model.forward(chunk, 0, cache, all_logits=True)[first:-1]
    out = np.empty((chunk.size - 1 - first, model.n_vocab), np.float32)
    out[0] = model.forward(chunk[:first + 1], 0, cache)  # the prompt batch; its last position is the first scored one
    for j, pos in enumerate(range(first + 1, chunk.size - 1), start=1):
        out[j] = model.forward(chunk[pos:pos + 1], pos, cache)  # one token over the KV cache: the decode kernels
    return out


def kl_divergence(model, reference, tokens, n_ctx: int = DEFAULT_N_CTX, n_chunks: int | None = None,
                  bos_id: int | None = None, mode: str = "decode", measured: str = "",
                  on_chunk: Callable | None = None) -> KLDResult:
    """KL divergence of `model` from `reference` (two runtime.model.Model of the same vocabulary: the path under
    test and the float reference) over the scored tokens of perplexity's chunks. mode: see the module's doc.
    on_chunk(i, result_so_far) is called after chunk i (1-based)."""
    if mode not in KL_MODES:
        raise LlambaError(f"unknown KL divergence mode {mode!r}; choose one of {', '.join(KL_MODES)}")
    if model.n_vocab != reference.n_vocab:
        raise LlambaError(f"the measured model has {model.n_vocab} tokens and the reference {reference.n_vocab}")
    for m in (model, reference):
        _check_fits(m, n_ctx)
    chunks = chunk_tokens(tokens, n_ctx, n_chunks, bos_id)  # (n_chunks, n_ctx)
    scored = scored_positions(n_ctx)
    originals = np.asarray(tokens, dtype=np.int64)
    parts, caches = [], [m.new_cache(n_ctx) for m in (model, reference)]
    for i, chunk in enumerate(chunks):
        ref = reference.forward(chunk, 0, caches[1], all_logits=True)[scored]  # (n_scored/chunk, n_vocab)
        got = _measured_logits(model, caches[0], chunk, scored.start, mode)
        targets = originals[i * n_ctx + scored.start + 1:(i + 1) * n_ctx]
        parts.append(token_kld(got, ref, targets))
        so_far = KLDResult(n_ctx, i + 1, measured, *(np.concatenate(a) for a in zip(*parts, strict=True)))
        if on_chunk is not None:
            on_chunk(i + 1, so_far)
    return so_far


@contextmanager
def kernel_path(path: str):
    """QMatrix objects built inside use kernel path `path` where they name none (quant.matrix.DEFAULT_PATH)."""
    import quant.matrix

    if path not in quant.matrix.PATHS:
        raise LlambaError(f"unknown kernel path {path!r}; choose one of {', '.join(quant.matrix.PATHS)}")
    saved = quant.matrix.DEFAULT_PATH
    quant.matrix.DEFAULT_PATH = path
    try:
        yield
    finally:
        quant.matrix.DEFAULT_PATH = saved


# ---- `llamba perplexity` / tools/perplexity.py ----------------------------------------------------------------

def add_arguments(p):
    p.add_argument("-m", "--model", default=None, help="GGUF path or known model name (default: the default model)")
    p.add_argument("-f", "--file", required=True, help="text file to score (UTF-8)")
    p.add_argument("-c", "--ctx-size", type=int, default=DEFAULT_N_CTX,
                   help="tokens per chunk; the second half of each is scored (default: %(default)s)")
    p.add_argument("--chunks", type=int, default=None, help="score at most this many chunks (default: all)")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all cores)")
    gpu.add_arguments(p)
    p.add_argument("--kl-divergence", action="store_true",
                   help="compare the model on --kernels with the float reference of the same file (KL divergence, "
                        "delta p, same top token, both perplexities), as llama.cpp's --kl-divergence reports")
    p.add_argument("--kl-mode", choices=KL_MODES, default="decode",
                   help="decode (default): the measured model runs each chunk as generation does, its first half as "
                        "a prompt batch, then one token at a time (the decode kernels); batch: as one batch "
                        "(prompt kernels: sgemm from 16 tokens on, float math on either path)")
    p.add_argument("--kernels", choices=("int", "float"), default=None,
                   help="kernel path of the measured model (default: LLAMBA_KERNELS, else int)")


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
    if args.kl_divergence:
        return _run_kl(args, text)
    if args.kernels is not None or args.kl_mode != "decode":
        raise LlambaError("--kernels and --kl-mode apply to --kl-divergence only")
    model = load_model(resolve_model(args.model), args.ctx_size, args.n_gpu_layers, args.main_gpu)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    print(f"perplexity: {args.file}, chunks of {args.ctx_size} tokens", file=sys.stderr)
    result = text_perplexity(model, tokenizer, text, args.ctx_size, args.chunks,
                             on_chunk=lambda i, ppl: print(f"[{i}]{ppl:.4f},", end="", flush=True))
    print(f"\n{result.summary()}")
    return 0


def _run_kl(args, text: str) -> int:
    """`--kl-divergence`: the running line after each chunk, then llama.cpp's statistics."""
    import sys

    import quant.matrix

    from ..model import load_model
    from ..registry import resolve_model
    from ..tokenizer import Tokenizer

    path = resolve_model(args.model)
    kernels = args.kernels or quant.matrix.DEFAULT_PATH
    with kernel_path(kernels):
        model = load_model(path, args.ctx_size, args.n_gpu_layers, args.main_gpu)
    with kernel_path("float"):
        reference = load_model(path, n_ctx=args.ctx_size)
    tokenizer = Tokenizer.from_gguf(model.gguf.metadata)
    first = args.ctx_size // 2
    how = (f"prompt batch of {first + 1} tokens, then {args.ctx_size - first - 2} tokens decoded one at a time"
           if args.kl_mode == "decode" else f"each chunk as one batch of {args.ctx_size} tokens")
    measured = (f"{kernels} kernels ({how}) against the float reference (float kernels, each chunk as one batch) "
                f"of {path}")
    print(f"kl_divergence: {args.file}, chunks of {args.ctx_size} tokens", file=sys.stderr)
    print(f"kl_divergence: {measured}")
    print(KLDResult.HEADER)
    tokens, bos_id = text_tokens(tokenizer, text)
    result = kl_divergence(model, reference, tokens, args.ctx_size, args.chunks, bos_id, args.kl_mode, measured,
                           on_chunk=lambda i, r: print(r.chunk_line(), flush=True))
    print()
    print(result.report())
    return 0
