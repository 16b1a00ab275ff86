"""Embeddings (LLM.embed, LLM.create_embedding): one vector per text, pooled from the model's final hidden states.

The hidden states are those after the output norm, the input of the output head, as llama.cpp's embeddings. The
pooling is the GGUF's `{arch}.pooling_type` when present, numbered as llama.cpp's (1 mean, 2 cls: the first token,
3 last: the last token), else mean. llama.cpp itself defaults to none for a model without the key (one vector per
token: llama-cpp-python's embed then returns a list of token vectors per text, and llama-server's OpenAI endpoint
refuses it), which fits neither an (n, n_embd) array nor OpenAI's one vector per input; mean pooling is the usual
choice for a decoder model. Rank pooling (4, rerankers) is not supported.

Texts are tokenized as llama-cpp-python's embed does (the model's BOS rule, special-token text left as text). Each
runs as one batch from position 0 over a scratch KV cache sized to the longest text, so no conversation's cache is
touched; llama.cpp packs several texts into one batch as separate sequences, which this attention cannot (one
sequence per batch).
"""

from collections.abc import Sequence

import numpy as np

from .errors import ContextOverflowError, LlambaError, UnsupportedError
from .gguf import meta

POOLING = {1: "mean", 2: "cls", 3: "last"}  # llama.cpp's enum llama_pooling_type (0 none, 4 rank)


def model_pooling(model) -> str:
    """The pooling of `{arch}.pooling_type`; mean when the key is absent or none (see the module docstring)."""
    kind = meta(model.gguf.metadata, f"{model.arch}.pooling_type", int, 0)
    if kind not in (0, *POOLING):
        raise UnsupportedError(f"{model.arch}.pooling_type {kind} is not supported (1 mean, 2 cls, 3 last)")
    return POOLING.get(kind, "mean")


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    # hidden (n_tokens, n_embd) -> (n_embd,)
    if pooling == "mean":
        return hidden.mean(axis=0)
    return hidden[0] if pooling == "cls" else hidden[-1]


def embed_ids(model, token_lists: Sequence[Sequence[int]], pooling: str | None = None,
              normalize: bool = True) -> np.ndarray:
    """Embeddings (n, n_embd) float32 of n token lists; normalize: each scaled to unit L2 norm."""
    pooling = model_pooling(model) if pooling is None else pooling
    if pooling not in POOLING.values():
        raise LlambaError(f"pooling must be one of {', '.join(POOLING.values())} or None, got {pooling!r}")
    for i, ids in enumerate(token_lists):
        if not 0 < len(ids) <= model.n_ctx:
            raise ContextOverflowError(f"text {i} is {len(ids)} tokens; an embedding takes 1..{model.n_ctx} "
                                       "(the context size)")
    out = np.empty((len(token_lists), model.config.n_embd), np.float32)  # (n, n_embd)
    if not token_lists:
        return out
    cache = model.new_cache(max(map(len, token_lists)))
    for i, ids in enumerate(token_lists):
        out[i] = pool(model.forward(np.asarray(ids, np.int32), 0, cache, hidden=True), pooling)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # (n, 1)
        out /= np.where(norms > 0, norms, 1)
    return out


def embed(llm, texts: str | Sequence[str], pooling: str | None = None, normalize: bool = True) -> np.ndarray:
    """LLM.embed: (n, n_embd) for a list of texts, (n_embd,) for one string."""
    vectors = _embed(llm, _token_lists(llm, texts), pooling, normalize)
    return vectors[0] if isinstance(texts, str) else vectors


def create_embedding(llm, input: str | Sequence[str], model: str | None = None) -> dict:
    """LLM.create_embedding: OpenAI's embeddings response, unit-norm vectors as OpenAI's (llama-cpp-python leaves
    them unnormalized); `model` names the model in it (default: the GGUF path, as llama-cpp-python)."""
    ids = _token_lists(llm, input)
    vectors = _embed(llm, ids, None, True)
    n_tokens = sum(map(len, ids))
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "model": model if model is not None else str(llm.path),
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def _token_lists(llm, texts: str | Sequence[str]) -> list:
    return [llm.tokenize(t, special=False) for t in ([texts] if isinstance(texts, str) else texts)]


def _embed(llm, ids: list, pooling: str | None, normalize: bool) -> np.ndarray:
    with llm._lock:  # the model's buffers are shared with generation
        llm._set_threads()
        return embed_ids(llm.model, ids, pooling, normalize)
