"""Per-token log-probabilities recorded during generation, in OpenAI's completion and chat shapes.

A token's log-probability is log_softmax of the raw model logits it was sampled from: before logit bias,
penalties and temperature, as llama-cpp-python reports them (its `logits_to_logprobs` of the model's scores)
and as OpenAI documents them. They are recorded by generate's `on_token` hook while the tokens are produced,
never by running the sequence again.
"""

from dataclasses import dataclass

import numpy as np

from .tokenizer import StreamDecoder


def log_normalizer(logits: np.ndarray) -> float:
    """log(sum(exp(logits))), shifted by the max: log_softmax(logits)[i] = logits[i] - log_normalizer(logits)."""
    top = float(np.max(logits))
    return top + float(np.log(np.sum(np.exp(logits - top), dtype=np.float64)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits.astype(np.float64) - log_normalizer(logits)  # (n_vocab,)


def top_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, largest first (ties: lower id first); 0.1-0.5 ms for 150k logits, ~10x
    faster than argpartition. The k-th largest of the 64-wide blocks' maxima bounds the k-th largest logit from
    below (k blocks each hold a logit at least that large), so only logits above it are candidates: a few."""
    blocks = logits[:len(logits) // 64 * 64].reshape(-1, 64).max(axis=1)  # (n_vocab // 64,)
    if k > len(blocks):
        candidates = np.arange(len(logits))
    else:
        candidates = np.flatnonzero(logits >= np.partition(blocks, -k)[-k]) if k else np.zeros(0, np.int64)
    return candidates[np.argsort(-logits[candidates], kind="stable")[:k]]


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    offset: int  # characters of generated text before this token's text
    top: list  # the k most likely tokens as (id, logprob), most likely first


class LogprobRecorder:
    """`on_token(token, logits)` for generate: records a TokenLogprob per generated token with its k most likely
    alternatives; `take()` hands out the ones recorded since the last take."""

    def __init__(self, tokenizer, k: int, special: bool = False):
        self.k = max(0, min(k, tokenizer.n_vocab))
        self.decoder = StreamDecoder(tokenizer, skip_special=not special)  # the text offsets of generate's text
        self.chars = 0
        self.entries: list[TokenLogprob] = []
        self.taken = 0

    def __call__(self, token: int, logits: np.ndarray):
        z = log_normalizer(logits)  # one normalizer for the k + 1 log-probabilities reported, not a log_softmax
        self.entries.append(TokenLogprob(token, float(logits[token]) - z, self.chars,
                                         [(int(i), float(logits[i]) - z) for i in top_ids(logits, self.k)]))
        self.chars += len(self.decoder.feed(token))

    def take(self) -> list[TokenLogprob]:
        new, self.taken = self.entries[self.taken:], len(self.entries)
        return new


def token_text(tokenizer, token: int) -> str:
    """A token's own text (a piece of a multi-byte character gives ""), as llama-cpp-python shows it."""
    return tokenizer.token_bytes(token).decode("utf-8", errors="ignore")


def completion_logprobs(tokenizer, entries: list[TokenLogprob], base_offset: int = 0) -> dict:
    """The completion shape: tokens, text_offset (from the start of the prompt), token_logprobs and top_logprobs
    ({text: logprob} of the k most likely tokens and the sampled one)."""
    text = [token_text(tokenizer, e.token) for e in entries]
    return {
        "tokens": text,
        "text_offset": [base_offset + e.offset for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{**{token_text(tokenizer, i): lp for i, lp in e.top}, t: e.logprob}
                         for t, e in zip(text, entries, strict=True)],
    }


def chat_logprobs(tokenizer, entries: list[TokenLogprob]) -> dict:
    """The chat shape: {content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}, ...]}, ...]}."""

    def item(token, logprob):
        return {"token": token_text(tokenizer, token), "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}

    content = [{**item(e.token, e.logprob), "top_logprobs": [item(i, lp) for i, lp in e.top]} for e in entries]
    return {"content": content, "refusal": None}
