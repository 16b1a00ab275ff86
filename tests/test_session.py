"""Sessions (independent conversations over one loaded model), closing an LLM, and saving / loading a
conversation's state, on the real SmolLM2 model with greedy decoding."""

import dataclasses

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gq

from runtime import LLM, LlambaError
from runtime.llm import Session
from runtime.state import SessionState

MODEL = "smollm2-135m-instruct"
N_CTX = 64
PROMPTS = ("The capital of France is", "Once upon a time, in a small village,")
GREEDY = dict(max_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def llm(model_path):
    with LLM(model_path(MODEL), n_ctx=N_CTX, n_threads=1) as llm:
        yield llm


def _maps(path) -> int:
    """How many memory maps of `path` this process holds."""
    with open("/proc/self/maps") as f:
        return sum(str(path) in line for line in f)


def test_sessions_keep_their_own_cache_and_prompt(llm):
    first = llm.generate(PROMPTS[0], **GREEDY)
    s = llm.session()
    assert isinstance(s, Session) and s.model is llm.model and s.tokenizer is llm.tokenizer
    assert s._ctx.cache is not llm._ctx.cache and s._ctx.tokens == []
    second = s.generate(PROMPTS[1], **GREEDY)
    assert second != first
    # each conversation still holds its own prompt: the next call reuses all of it but the last token
    assert llm.generate(PROMPTS[0], **GREEDY) == first
    assert llm.last_stats.n_reused == len(llm.tokenize(PROMPTS[0])) - 1
    assert s.generate(PROMPTS[1], **GREEDY) == second
    assert s.last_stats.n_reused == len(llm.tokenize(PROMPTS[1])) - 1
    assert s.session().generate(PROMPTS[1], **GREEDY) == second  # a session of a session: a sibling
    s.close()


def test_each_cache_allocation_checks_the_memory(llm, monkeypatch):
    import runtime.model

    def refuse(config, n_ctx, type_k, type_v, tables=True):
        raise LlambaError(f"a context of {n_ctx} tokens needs more memory (tables={tables})")

    monkeypatch.setattr(runtime.model, "_check_memory", refuse)
    with pytest.raises(LlambaError, match=f"a context of {N_CTX} tokens needs more memory \\(tables=False\\)"):
        llm.session()


def test_sessions_share_the_llm_lock(llm):
    s = llm.session()
    pieces = s.stream(PROMPTS[0], **GREEDY)
    next(pieces)  # the session's stream now holds the lock shared with the LLM
    with pytest.raises(LlambaError, match="busy in this thread"):
        llm.generate(PROMPTS[1], **GREEDY)
    pieces.close()
    assert llm.generate(PROMPTS[1], max_tokens=2, temperature=0)
    s.close()


def test_closing_a_session_frees_only_its_cache(llm):
    s = llm.session()
    s.generate(PROMPTS[0], max_tokens=2, temperature=0)
    s.close()
    assert s._ctx.cache is None
    for call in (lambda: s.generate(PROMPTS[0]), lambda: s.logits([1, 2]), lambda: s.save_state()):
        with pytest.raises(LlambaError, match="closed"):
            call()
    assert llm.generate(PROMPTS[0], max_tokens=2, temperature=0)


def test_close_releases_the_map_and_every_cache(model_path):
    path = model_path(MODEL)
    before = _maps(path)  # the module's LLM maps the file too
    with LLM(path, n_ctx=32, n_threads=1) as llm:
        s = llm.session()
        assert llm.generate(PROMPTS[0], max_tokens=2, temperature=0) and _maps(path) == before + 1
    assert llm._ctx.cache is None and s._ctx.cache is None
    assert _maps(path) == before  # no view of the weights is left: the file is unmapped
    for call in (lambda: llm.generate(PROMPTS[0]), lambda: s.chat([{"role": "user", "content": "Hi"}]),
                 lambda: llm.logits([1, 2]), lambda: llm.embed("x"), llm.session):
        with pytest.raises(LlambaError, match="closed"):
            call()
    llm.close()  # twice is fine


# ---- save_state / load_state -------------------------------------------------------------------------------------

def test_state_resumes_the_same_continuation(llm, tmp_path):
    ids = llm.tokenize(PROMPTS[1])
    llm.logits(ids)  # the prompt is in the cache
    state = llm.save_state(tmp_path / "prompt.state")
    assert state.n_tokens == len(ids) and state.k.shape[2] == len(ids)
    expected = llm.generate(ids, **GREEDY)
    llm.generate(PROMPTS[0], **GREEDY)  # another prompt overwrites the cache
    for src in (state, tmp_path / "prompt.state"):
        llm.load_state(src)
        assert llm.generate(ids, **GREEDY) == expected
        assert llm.last_stats.n_reused == len(ids) - 1  # the loaded K/V were used, not recomputed
    fresh = llm.session()
    fresh.load_state(tmp_path / "prompt.state")
    assert fresh.generate(ids, **GREEDY) == expected and fresh.last_stats.n_reused == len(ids) - 1
    fresh.close()


def test_state_in_a_fresh_llm_resumes_identically(llm, model_path, tmp_path):
    """A conversation saved mid-way (prompt and reply) and loaded by a separately loaded LLM of the same model goes
    on exactly as the original does."""
    ids = llm.tokenize(PROMPTS[0])
    llm.reset()
    llm.generate(ids, **GREEDY)
    history = ids + llm.last_stats.tokens
    llm.save_state(tmp_path / "chat.state")
    expected = llm.generate(history, **GREEDY)
    with LLM(model_path(MODEL), n_ctx=N_CTX, n_threads=1, warmup=False) as other:
        other.load_state(tmp_path / "chat.state")
        assert other.generate(history, **GREEDY) == expected
        assert other.last_stats.n_reused == len(history) - 1


def test_state_moves_between_cache_types(llm, model_path, tmp_path):
    """A state keeps the cache's element type (f16 by default, half the file); an f32-cache LLM restores it exactly
    widened, and its own state restores into an f16 cache rounded to nearest even."""
    ids = llm.tokenize(PROMPTS[1])
    llm.reset()
    llm.generate(ids, **GREEDY)
    state = llm.save_state(tmp_path / "f16.state")
    assert state.k.dtype == state.v.dtype == np.float16
    n = state.n_tokens
    with LLM(model_path(MODEL), n_ctx=N_CTX, n_threads=1, warmup=False, type_k="f32", type_v="f32") as wide:
        wide.load_state(tmp_path / "f16.state")
        cache = wide._ctx.cache
        assert cache.k.dtype == np.float32
        np.testing.assert_array_equal(cache.k[:, :, :n], state.k.astype(np.float32))
        np.testing.assert_array_equal(cache.v[:, :, :n], state.v.astype(np.float32))
        wide.generate(ids, **GREEDY)
        back = wide.save_state()
    assert back.k.dtype == np.float32
    llm.load_state(back)
    np.testing.assert_array_equal(llm._ctx.cache.k[:, :, :back.n_tokens], back.k.astype(np.float16))


def test_state_moves_to_and_from_q8_0(llm, model_path):
    """q8_0 blocks in and out of a state: an f16 state is quantized as gguf.quants quantizes Q8_0, and a q8_0 state
    (its blocks, 17/32 of f16's bytes) widens into an f16 cache as gguf.quants dequantizes them."""
    ids = llm.tokenize(PROMPTS[0])
    llm.reset()
    llm.generate(ids, **GREEDY)
    state = llm.save_state()
    n, q8 = state.n_tokens, GGMLQuantizationType.Q8_0
    with LLM(model_path(MODEL), n_ctx=N_CTX, n_threads=1, warmup=False, type_k="q8_0", type_v=8) as small:
        small.load_state(state)
        np.testing.assert_array_equal(small._ctx.cache.v[:, :, :n], gq.quantize(state.v.astype(np.float32), q8))
        small.generate(ids, **GREEDY)
        blocks = small.save_state()
    assert blocks.k.dtype == np.uint8 and blocks.k.nbytes * 32 == state.k.nbytes * 17
    llm.load_state(blocks)
    np.testing.assert_array_equal(llm._ctx.cache.k[:, :, :blocks.n_tokens],
                                  gq.dequantize(blocks.k, q8).astype(np.float16))


def test_state_of_another_model_or_context_is_refused(llm, model_path):
    state = llm.save_state()
    with LLM(model_path(MODEL), n_ctx=N_CTX // 2, warmup=False) as small:
        with pytest.raises(LlambaError, match=f"n_ctx={N_CTX}; this model runs n_ctx={N_CTX // 2}"):
            small.load_state(state)
    with LLM(model_path("gemma-3-270m"), n_ctx=N_CTX, warmup=False) as gemma:
        with pytest.raises(LlambaError, match="another model"):
            gemma.load_state(state)
    n = state.n_tokens
    for bad in (dict(k=state.k[:, :1]), dict(v=state.v.astype(np.float64)), dict(tokens=state.tokens[:-1]),
                dict(tokens=np.full(n, llm.n_vocab, np.int32))):
        with pytest.raises(LlambaError, match="do not fit|outside the vocabulary"):
            llm.load_state(dataclasses.replace(state, **bad))


def test_damaged_state_files_are_refused(llm, tmp_path):
    llm.logits(llm.tokenize(PROMPTS[1]))
    path = tmp_path / "good.state"
    llm.save_state(path)
    data = path.read_bytes()
    damaged = {"truncated": data[:len(data) // 2], "empty": b"", "flipped": _flip(data, len(data) // 2),
               "text": b"not a state file at all"}
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(LlambaError, match="not a llamba state file"):
            llm.load_state(tmp_path / name)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(LlambaError, match="not an .npz"):
        llm.load_state(tmp_path / "array.npy")
    with pytest.raises(LlambaError, match="no such state file"):
        llm.load_state(tmp_path / "missing.state")
    np.savez(tmp_path / "other.npz", header=np.frombuffer(b'{"format": "x"}', np.uint8), tokens=[], k=[], v=[])
    with pytest.raises(LlambaError, match="not a llamba-state file"):
        SessionState.load(tmp_path / "other.npz")


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
