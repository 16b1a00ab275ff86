"""Sampling: turn a logits vector into the next token, with llama.cpp's parameters and defaults.

The chain follows llama.cpp's default order: logit bias -> penalties -> top-k -> top-p -> min-p ->
temperature -> draw from the softmax. Each transform is a small pure function over a candidate set
(`ids`, `logits`: two aligned 1-D arrays), so tests can check it against its definition.
A temperature <= 0 means greedy decoding (argmax after the bias and the penalties). A `constraint`
(runtime.grammar.Constraint) masks the logits before all of it: tokens its grammar forbids get -inf and are never
drawn, greedy included.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import NumericsError


@dataclass(frozen=True)
class SamplingParams:
    """llama.cpp's sampling knobs with llama.cpp's defaults; seed None draws a fresh random seed."""

    temperature: float = 0.8
    top_k: int = 40  # <= 0: disabled
    top_p: float = 0.95  # >= 1: disabled
    min_p: float = 0.05  # <= 0: disabled
    repeat_penalty: float = 1.0  # 1: disabled
    repeat_last_n: int = 64  # how many recent tokens the penalties look at; -1: all of them
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    logit_bias: Mapping[int, float] | tuple = ()  # token id -> added to its logit; kept as sorted (id, bias) pairs

    def __post_init__(self):
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias))
        checks = [
            (self.temperature == self.temperature, "temperature must be a number"),
            (0.0 <= self.top_p <= 1.0, f"top_p must be in [0, 1], got {self.top_p}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repeat_penalty > 0.0, f"repeat_penalty must be > 0, got {self.repeat_penalty}"),
            (self.repeat_last_n >= -1, f"repeat_last_n must be >= -1, got {self.repeat_last_n}"),
            (self.seed is None or self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (all(t >= 0 for t, _ in self.logit_bias), "logit_bias token ids must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def softmax(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Probabilities of logits / t in float64, shifted by the max before dividing: a tiny temperature tends to
    greedy instead of overflowing to inf - inf = NaN."""
    with np.errstate(over="ignore"):  # (l - max) / t overflowing to -inf is probability 0, as meant
        z = np.exp((logits.astype(np.float64) - np.max(logits)) / t)
    return z / z.sum()


def _bias_pairs(bias) -> tuple:
    """Sorted (token id, bias) pairs from a mapping (keys may be numeric strings, as in OpenAI's JSON) or pairs."""
    items = bias.items() if isinstance(bias, Mapping) else bias
    return tuple(sorted((int(t), float(b)) for t, b in items))


def apply_logit_bias(logits: np.ndarray, bias: tuple) -> np.ndarray:
    """`logits` with each (id, b) pair's b added to logit id (a copy; the same array when there is no bias)."""
    if not bias:
        return logits
    ids, values = zip(*bias, strict=True)
    out = np.array(logits, dtype=np.float32, copy=True)  # (n_vocab,)
    out[list(ids)] += np.asarray(values, dtype=np.float32)
    return out


def apply_penalties(logits: np.ndarray, history, repeat: float, frequency: float, presence: float) -> np.ndarray:
    """llama.cpp penalties over the tokens in `history` (a copy of `logits` is returned).

    For each token seen c > 0 times: logit / repeat if logit > 0 else logit * repeat, then
    logit -= c * frequency + presence.
    """
    out = np.array(logits, dtype=np.float32, copy=True)  # (n_vocab,)
    if len(history) == 0 or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        return out
    ids, counts = np.unique(np.asarray(history, dtype=np.int64), return_counts=True)
    vals = out[ids]
    vals = np.where(vals <= 0.0, vals * repeat, vals / repeat)
    out[ids] = vals - counts * frequency - presence
    return out


def top_k(ids: np.ndarray, logits: np.ndarray, k: int):
    """The k highest-logit candidates, sorted by descending logit; k <= 0 or k >= n keeps all (sorted)."""
    n = len(logits)
    if 0 < k < n:
        part = np.argpartition(-logits, k - 1)[:k]
        ids, logits = ids[part], logits[part]
    order = np.argsort(-logits, kind="stable")
    return ids[order], logits[order]


def top_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Nucleus: the shortest prefix of the (descending-sorted) candidates whose probability mass >= p."""
    if p >= 1.0:
        return ids, logits
    cum = np.cumsum(softmax(logits))
    keep = max(int(np.searchsorted(cum, p, side="left")) + 1, min_keep)
    return ids[:keep], logits[:keep]


def min_p(ids: np.ndarray, logits: np.ndarray, p: float, min_keep: int = 1):
    """Candidates whose probability is >= p times the most likely one's (order preserved)."""
    if p <= 0.0:
        return ids, logits
    keep = logits >= np.max(logits) + np.log(p)
    if keep.sum() < min_keep:
        return top_k(ids, logits, min_keep)
    return ids[keep], logits[keep]


class Sampler:
    """Picks tokens for one generation: owns the seeded RNG, so the same seed gives the same tokens, and the
    generation's constraint, if any: the caller reports each emitted token with `accept` and stops at `finished`."""

    def __init__(self, params: SamplingParams = SamplingParams(), constraint=None):
        self.params = params
        self.constraint = constraint
        self.rng = np.random.default_rng(params.seed)

    def accept(self, token: int) -> None:
        """Advance the constraint past `token`, the sampled token the generation emits."""
        if self.constraint is not None:
            self.constraint.advance(token)

    @property
    def finished(self) -> bool:
        """The constraint's text is complete: nothing but an end-of-generation token may follow."""
        return self.constraint is not None and self.constraint.done

    def sample(self, logits: np.ndarray, history=()) -> int:
        """The next token id from `logits` (n_vocab,) given the ids so far (prompt + generated)."""
        p = self.params
        if not np.isfinite(np.max(logits)):  # NaN propagates through max; one reduction per token
            raise NumericsError("the model produced NaN or infinite logits: its weights or activations are not "
                                "finite (a damaged or wrongly converted file?)")
        if self.constraint is not None:
            logits = self.constraint.mask(logits)  # forbidden tokens at -inf: they stay there through the chain
        recent = _last_n(history, p.repeat_last_n)
        logits = apply_logit_bias(logits, p.logit_bias)
        logits = apply_penalties(logits, recent, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
        if p.greedy:
            return int(np.argmax(logits))
        ids = np.arange(len(logits))
        ids, logits = top_k(ids, logits, p.top_k)  # sorted descending from here on
        ids, logits = top_p(ids, logits, p.top_p)
        ids, logits = min_p(ids, logits, p.min_p)
        probs = softmax(logits, p.temperature)
        return int(ids[self.rng.choice(len(ids), p=probs)])


def _last_n(history, n: int):
    """The last n entries of history; n < 0 means all, n == 0 none."""
    if n < 0:
        return history
    return history[max(len(history) - n, 0):] if n else ()
