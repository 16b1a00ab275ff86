"""The decode loop: prompt as one batch, then one token at a time until a stop condition.

Stop conditions: an end-of-generation token (never emitted), the sampler's grammar complete (stop_reason "eog"
as well: only such a token could follow), max_tokens, a stop string (never emitted; a partial match is held back
while streaming), a full context (unless it is shifted: Context.shift), or a cancellation handle set by another
thread. Text is streamed through the tokenizer's StreamDecoder, so multi-byte UTF-8
characters split across tokens are never broken; special tokens (control tokens, tag-like user-defined ones)
are left out of the text unless `special=True` (llama.cpp's `--special`).

The speed figures exclude kernel compilation (quant.jit.cache.compile_seconds): a model's warm-up compiles its
kernels before the first token, and any kernel compiled later is not counted as prompt or generation time.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from quant.jit import cache as jit_cache

from .errors import ContextOverflowError, LlambaError
from .sampling import Sampler
from .tokenizer import StreamDecoder


@dataclass
class GenerationStats:
    """Filled in by `generate` as it runs; complete once the generator is exhausted or closed."""

    n_prompt: int = 0  # prompt tokens
    n_reused: int = 0  # prompt tokens whose K/V were already in the cache (not recomputed)
    n_generated: int = 0
    prompt_seconds: float = 0.0
    generate_seconds: float = 0.0  # sampling + decode forwards, not the consumer's time
    compile_seconds: float = 0.0  # kernel compilation during this generation, left out of the two above
    stop_reason: str = ""  # "eog", "stop", "length", "context", "cancelled" or "closed"
    tokens: list = field(default_factory=list)  # generated ids (an end-of-generation token excluded)

    @property
    def prompt_tps(self) -> float:
        return (self.n_prompt - self.n_reused) / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.n_generated / self.generate_seconds if self.generate_seconds else 0.0


class Context:
    """One conversation over a model: its own KV cache and the token ids whose K/V it holds, so a new prompt reuses
    the common prefix. Contexts over one model are independent but share its buffers: one forward at a time."""

    def __init__(self, model):
        self.model = model
        self.cache = model.new_cache()  # K, V (n_layer, n_head_kv, n_ctx, head_dim); None once closed
        self.tokens: list[int] = []  # ids at positions 0..len-1 of the KV cache

    def close(self) -> None:
        """Free the KV cache; every later use raises LlambaError."""
        self.cache, self.tokens = None, []

    def _forward(self, ids: Sequence[int], pos: int, all_logits: bool = False) -> np.ndarray:
        return self.model.forward(np.asarray(ids, dtype=np.int32), pos, self.cache, all_logits)

    def check_open(self):
        if self.cache is None:
            raise LlambaError("this LLM or session was closed (its KV cache is freed): open a new one")

    def check_fits(self, n: int):
        self.check_open()
        if n > self.model.n_ctx:
            raise ContextOverflowError(
                f"prompt is {n} tokens but the context holds {self.model.n_ctx} "
                f"(n_prompt={n}, n_ctx={self.model.n_ctx}); shorten the prompt or raise the context size")

    def eval(self, ids: Sequence[int]) -> tuple[np.ndarray, int]:
        """Logits (n_vocab,) after the last of `ids`, and how many leading ids were reused from the cache."""
        ids = [int(i) for i in ids]
        if not ids:
            raise LlambaError("the prompt is empty (no tokens to start from)")
        self.check_fits(len(ids))
        reuse = 0
        for a, b in zip(self.tokens, ids[:-1], strict=False):  # at least the last id is recomputed, for its logits
            if a != b:
                break
            reuse += 1
        self.tokens = self.tokens[:reuse]
        logits = self._forward(ids[reuse:], reuse)  # (n_vocab,)
        self.tokens = ids
        return logits, reuse

    def eval_all(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (n, n_vocab) of every position of `ids`, computed from position 0."""
        ids = [int(i) for i in ids]
        if not ids:
            raise LlambaError("no tokens to evaluate")
        self.check_fits(len(ids))
        self.tokens = []
        logits = self._forward(ids, 0, all_logits=True)  # (n, n_vocab)
        self.tokens = ids
        return logits

    def append(self, token: int) -> np.ndarray:
        """Logits (n_vocab,) after appending one token."""
        logits = self._forward([token], len(self.tokens))  # (n_vocab,)
        self.tokens.append(int(token))
        return logits

    def shift(self, n_keep: int) -> bool:
        """Make room in the context as llama.cpp's context shift does: keep the first n_keep tokens, drop the oldest
        half of the rest; False when there is nothing to drop.

        The tokens after the dropped ones move to lower positions. llama.cpp re-rotates their cached keys by the
        position delta (a K-shift), which leaves deeper layers' K/V still computed from the dropped tokens. Here they
        are recomputed instead, one batch of about n_ctx/2 tokens per shift: the cache then holds what a fresh
        evaluation of the kept tokens gives (up to rounding where the batches split), for every architecture
        (learned positions, ALiBi and sliding windows included), with no kernel of its own."""
        n_keep = min(n_keep, len(self.tokens))
        n_discard = (len(self.tokens) - n_keep) // 2
        if n_discard == 0:
            return False
        kept = self.tokens[:n_keep] + self.tokens[n_keep + n_discard:]
        self.tokens = self.tokens[:n_keep]  # the cache is inconsistent until the forward below completes
        self._forward(kept[n_keep:], n_keep)
        self.tokens = kept
        return True

    @property
    def full(self) -> bool:
        return len(self.tokens) >= self.model.n_ctx


class StopMatcher:
    """Finds stop strings in streamed text; holds back a tail that could still become one."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached). A caller stops feeding at a hit; the text from
        the stop string on is then held (flush() returns it, for callers that want what follows)."""
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = buf[min(hits):]
            return buf[:min(hits)], True
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best


def generate(ctx: Context, tokenizer, prompt_ids: Sequence[int], max_tokens: int | None, sampler: Sampler,
             stop: Sequence[str] = (), cancel=None, stats: GenerationStats | None = None,
             special: bool = False, on_token: Callable[[int, np.ndarray], None] | None = None,
             n_keep: int | None = None) -> Iterator[str]:
    """Yield text pieces of the continuation of `prompt_ids`.

    max_tokens None (or < 0) runs until an end-of-generation token or a full context. `cancel` is any
    object with `is_set()` (e.g. threading.Event), checked before every token (the prompt batch runs
    uninterrupted). Raises ContextOverflowError at the first next(), before any work, when the prompt does
    not fit in the context. special: print special tokens as their text. `on_token(token, logits)` sees each
    generated token (as stats.tokens) with the raw logits (n_vocab,) it was sampled from, before its text.
    n_keep: None stops at a full context (stop_reason "context"); an int shifts the context instead
    (Context.shift), keeping the first n_keep tokens (-1: the whole prompt) plus a leading BOS token, which
    llama.cpp always keeps.
    """
    stats = stats if stats is not None else GenerationStats()
    stats.n_prompt = len(prompt_ids)
    ctx.check_fits(len(prompt_ids))
    limit = float("inf") if max_tokens is None or max_tokens < 0 else max_tokens
    start, compiled = time.perf_counter(), jit_cache.compile_seconds()
    logits, stats.n_reused = ctx.eval(prompt_ids)
    stats.compile_seconds = jit_cache.compile_seconds() - compiled
    stats.prompt_seconds = time.perf_counter() - start - stats.compile_seconds

    history = list(prompt_ids)
    keep = None if n_keep is None else _shift_keep(n_keep, history, tokenizer.bos_id)
    eog = set(tokenizer.eog_ids)
    decoder = StreamDecoder(tokenizer, skip_special=not special)
    matcher = StopMatcher(stop)
    stats.stop_reason = "closed"
    clock = _BusyClock(stats)
    try:
        while True:
            if stats.n_generated >= limit:
                stats.stop_reason = "length"
                break
            if cancel is not None and cancel.is_set():
                stats.stop_reason = "cancelled"
                break
            token = sampler.sample(logits, history)
            if token in eog:
                stats.stop_reason = "eog"
                break
            sampler.accept(token)
            history.append(token)
            stats.tokens.append(token)
            stats.n_generated += 1
            if on_token is not None:
                on_token(token, logits)
            text, hit = matcher.feed(decoder.feed(token))
            if text:
                with clock.paused():
                    yield text
            if hit:
                stats.stop_reason = "stop"
                return
            if sampler.finished:
                stats.stop_reason = "eog"
                break
            if stats.n_generated < limit:
                if ctx.full and not (keep is not None and ctx.shift(keep)):
                    stats.stop_reason = "context"
                    break
                logits = ctx.append(token)
        text, hit = matcher.feed(decoder.flush())
        if hit:
            stats.stop_reason = "stop"
        tail = text + ("" if hit else matcher.flush())
        if tail:
            with clock.paused():
                yield tail
    finally:
        clock.stop()


def _shift_keep(n_keep: int, prompt: list, bos_id: int | None) -> int:
    """Leading tokens a context shift keeps, as llama.cpp's: the whole prompt for n_keep < 0 or longer than it,
    else n_keep plus a leading BOS token."""
    if n_keep < 0 or n_keep > len(prompt):
        return len(prompt)
    return n_keep + (bos_id is not None and prompt[0] == bos_id)


class _BusyClock:
    """Adds the generator's own running time (not the time the consumer holds a yielded piece, nor kernel
    compilation) to stats."""

    def __init__(self, stats: GenerationStats):
        self.stats = stats
        self._start()

    def _start(self):
        self.since, self.compiled = time.perf_counter(), jit_cache.compile_seconds()

    def stop(self):
        if self.since is not None:
            compiled = jit_cache.compile_seconds() - self.compiled
            self.stats.compile_seconds += compiled
            self.stats.generate_seconds += time.perf_counter() - self.since - compiled
            self.since = None

    @contextmanager
    def paused(self):
        self.stop()
        yield
        self._start()
