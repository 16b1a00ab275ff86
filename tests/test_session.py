"""Sessions (independent conversations over one loaded model) and closing an LLM, on the real SmolLM2 model with
greedy decoding."""

import pytest

from runtime import LLM, LlambaError
from runtime.llm import Session

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

    def refuse(config, n_ctx, tables=True):
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
    for call in (lambda: s.generate(PROMPTS[0]), lambda: s.logits([1, 2])):
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
                 lambda: llm.logits([1, 2]), llm.session):
        with pytest.raises(LlambaError, match="closed"):
            call()
    llm.close()  # twice is fine
