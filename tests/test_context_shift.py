"""Context shift: generation going on past a full context (llama.cpp's context shift, recomputing the moved tokens'
K/V), checked against fresh evaluations of the shifted token lists on the real SmolLM2 model."""

import numpy as np
import pytest

from runtime import LLM
from runtime.generate import Context, _shift_keep

MODEL, N_CTX = "smollm2-135m-instruct", 48
PROMPT = "Here is a long story about a brave little dragon who learned to fly."
TOLERANCE = 2e-3  # logits: float32 rounding where the fresh run batches tokens differently (measured < 1e-4)


@pytest.fixture(scope="module")
def llm(model_path):
    # f32 KV cache: a shifted cache is compared with a fresh evaluation's within 1e-4 (f16 rounds either by an ulp)
    with LLM(model_path(MODEL), n_ctx=N_CTX, n_threads=1, type_k="f32", type_v="f32") as llm:
        yield llm


def test_kept_tokens_follow_llama_cpp():
    bos = 1
    assert _shift_keep(0, [5, 6, 7], bos) == 0
    assert _shift_keep(0, [bos, 6, 7], bos) == 1  # the BOS token is always kept
    assert _shift_keep(2, [bos, 6, 7, 8], bos) == 3
    assert _shift_keep(2, [5, 6, 7], None) == 2
    assert _shift_keep(-1, [5, 6, 7], bos) == 3  # -1: the whole prompt
    assert _shift_keep(9, [5, 6, 7], bos) == 3


def test_shifted_cache_equals_a_fresh_evaluation(llm):
    """After a shift the cache holds the K/V a fresh evaluation of the kept tokens gives, and the next token's logits
    are the fresh run's."""
    ctx, n_keep = Context(llm.model), 4
    logits, _ = ctx.eval(llm.tokenize(PROMPT))
    while not ctx.full:
        logits = ctx.append(int(logits.argmax()))
    full = list(ctx.tokens)
    assert ctx.shift(n_keep)
    kept = full[:n_keep] + full[n_keep + (N_CTX - n_keep) // 2:]
    assert ctx.tokens == kept
    token = int(logits.argmax())
    got = ctx.append(token)  # (n_vocab,)
    fresh = Context(llm.model)
    want = fresh.eval_all(kept + [token])[-1]
    n = len(kept) + 1
    for ours, ref in ((ctx.cache.k, fresh.cache.k), (ctx.cache.v, fresh.cache.v)):
        np.testing.assert_allclose(ours[:, :, :n], ref[:, :, :n], rtol=0, atol=1e-4 * np.abs(ref[:, :, :n]).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    assert not Context(llm.model).shift(0)  # an empty context has nothing to drop
    ctx.tokens = ctx.tokens[:6]
    assert not ctx.shift(5)  # nor one whose tokens after the kept ones are fewer than 2


def test_generation_past_the_context_equals_fresh_runs_of_the_shifted_tokens(llm):
    """Greedy generation well past the context: each token is the greedy pick of a fresh run over the token list the
    shifts left (evaluated as one batch after each shift, then decoded), up to a near-tie."""
    ids, n_new = llm.tokenize(PROMPT), 5 * N_CTX // 4  # two shifts
    llm.generate(ids, n_new, temperature=0, context_shift=True)
    stats = llm.last_stats
    assert stats.stop_reason == "length" and stats.n_generated == n_new
    seq, shifts = list(ids), 0
    ref = Context(llm.model)
    logits, _ = ref.eval(seq)
    for token in stats.tokens:
        assert logits.max() - logits[token] < TOLERANCE  # the greedy pick, or a near-tie
        if len(seq) == N_CTX:  # the generation shifted here (llm.n_keep 0, SmolLM2 adds no BOS)
            seq, shifts = seq[N_CTX // 2:], shifts + 1
            ref.close()
            ref = Context(llm.model)
            logits, _ = ref.eval(seq + [token])
        else:
            logits = ref.append(token)
        seq.append(token)
    assert shifts >= 2
    assert llm._ctx.tokens == seq[:-1]  # the last generated token is not evaluated


def test_context_shift_is_off_by_default_and_chosen_per_call(llm):
    ids, n_new = llm.tokenize(PROMPT), N_CTX
    llm.generate(ids, n_new, temperature=0)
    assert llm.last_stats.stop_reason == "context" and len(ids) + llm.last_stats.n_generated == N_CTX + 1
    s = llm.session()
    s.context_shift, s.n_keep = True, -1  # a session's own defaults: shift, keeping the whole prompt
    s.generate(ids, n_new, temperature=0)
    assert s.last_stats.stop_reason == "length" and s._ctx.tokens[:len(ids)] == ids
    s.generate(ids, n_new, temperature=0, context_shift=False)
    assert s.last_stats.stop_reason == "context"
    long = (ids * N_CTX)[:N_CTX - 1]  # kept whole, it leaves nothing to drop: the generation stops
    s.generate(long, n_new, temperature=0)
    assert s.last_stats.stop_reason == "context" and s.last_stats.n_generated == 2
    s.close()
