"""Sampling transforms against direct reimplementations of their (llama.cpp) definitions, and the
statistics of the full sampler (support, frequencies, seeding)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.sampling import Sampler, SamplingParams, apply_penalties, min_p, top_k, top_p

N_DRAWS = 4000


def ref_softmax(x):
    e = np.exp(np.asarray(x, np.float64) - max(x))
    return e / e.sum()


def ref_penalties(logits, history, repeat, freq, presence):
    out = [float(v) for v in logits]
    for tok in set(history):
        count = list(history).count(tok)
        out[tok] = out[tok] * repeat if out[tok] <= 0 else out[tok] / repeat
        out[tok] -= count * freq + presence
    return np.array(out)


def ref_top_k(logits, k):
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    return order[:k] if k > 0 else order


def ref_top_p(logits, p):
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    probs = ref_softmax([logits[i] for i in order])
    total = 0.0
    for n, q in enumerate(probs, 1):
        total += q
        if total >= p:
            return order[:n]
    return order


def ref_min_p(logits, p):
    probs = ref_softmax(logits)
    return [i for i in range(len(logits)) if probs[i] >= p * probs.max()]


def ref_distribution(logits, history, sp: SamplingParams):
    """The probability of every token under the whole chain, built from the reference transforms."""
    x = ref_penalties(logits, history[-sp.repeat_last_n:], sp.repeat_penalty, sp.frequency_penalty,
                      sp.presence_penalty)
    ids = np.array(ref_top_k(x, sp.top_k))
    ids = ids[ref_top_p(x[ids], sp.top_p)]
    ids = ids[ref_min_p(x[ids], sp.min_p)]
    dist = np.zeros(len(logits))
    dist[ids] = ref_softmax(x[ids] / sp.temperature)
    return dist


def draws(logits, params, history=(), n=N_DRAWS):
    sampler = Sampler(params)
    return np.array([sampler.sample(logits, list(history)) for _ in range(n)])


def crafted(rng, n=50):
    return (rng.standard_normal(n) * 2).astype(np.float32)


logit_lists = st.lists(st.floats(-20, 20, width=32), min_size=2, max_size=40, unique=True)


def test_defaults_are_llama_cpp():
    sp = SamplingParams()
    assert (sp.temperature, sp.top_k, sp.top_p, sp.min_p) == (0.8, 40, 0.95, 0.05)
    assert (sp.repeat_penalty, sp.repeat_last_n, sp.frequency_penalty, sp.presence_penalty) == (1.0, 64, 0.0, 0.0)


@pytest.mark.parametrize("bad", [dict(top_p=1.5), dict(min_p=-0.1), dict(repeat_penalty=0.0),
                                 dict(repeat_last_n=-2), dict(seed=-3), dict(temperature=float("nan"))])
def test_invalid_params_raise(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@settings(max_examples=60, deadline=None)
@given(logit_lists, st.lists(st.integers(0, 39), max_size=30), st.floats(0.5, 2.0), st.floats(0, 1), st.floats(0, 1))
def test_penalties_match_definition(logits, history, repeat, freq, presence):
    logits = np.array(logits, np.float32)
    history = [h % len(logits) for h in history]
    got = apply_penalties(logits, history, repeat, freq, presence)
    np.testing.assert_allclose(got, ref_penalties(logits, history, repeat, freq, presence), rtol=1e-5, atol=1e-5)


def test_repeat_penalty_divides_positive_multiplies_negative():
    got = apply_penalties(np.array([2.0, -2.0, 3.0], np.float32), [0, 1], 2.0, 0.0, 0.0)
    np.testing.assert_array_equal(got, [1.0, -4.0, 3.0])


@settings(max_examples=60, deadline=None)
@given(logit_lists, st.integers(0, 45))
def test_top_k_matches_definition(logits, k):
    logits = np.array(logits, np.float32)
    ids, vals = top_k(np.arange(len(logits)), logits, k)
    assert list(ids) == ref_top_k(logits, k)
    np.testing.assert_array_equal(vals, logits[ids])


@settings(max_examples=60, deadline=None)
@given(logit_lists, st.floats(0.01, 1.0))
def test_top_p_matches_definition(logits, p):
    logits = np.array(logits, np.float32)
    ids, vals = top_k(np.arange(len(logits)), logits, 0)  # top_p expects descending order, as in the chain
    ids, vals = top_p(ids, vals, p)
    ref = ref_top_p(logits, p)
    if list(ids) != ref:  # only where the two cumulative sums round differently at the boundary
        assert abs(len(ids) - len(ref)) == 1 and abs(ref_softmax(logits)[ref].sum() - p) < 1e-6


@settings(max_examples=60, deadline=None)
@given(logit_lists, st.floats(0.0, 1.0))
def test_min_p_matches_definition(logits, p):
    logits = np.array(logits, np.float32)
    ids, vals = min_p(np.arange(len(logits)), logits, p)
    assert sorted(ids) == ref_min_p(logits, p) if p > 0 else list(ids) == list(range(len(logits)))


def test_greedy_is_argmax_after_penalties(rng):
    logits = crafted(rng)
    best = int(np.argmax(logits))
    assert set(draws(logits, SamplingParams(temperature=0, seed=None), n=20)) == {best}
    runner_up = int(np.argsort(-logits)[1])
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1e3)).sample(logits, [best]) == runner_up


def test_top_k_support(rng):
    logits = crafted(rng)
    got = draws(logits, SamplingParams(temperature=1.5, top_k=5, top_p=1.0, min_p=0.0, seed=1))
    assert set(got) == set(np.argsort(-logits)[:5])  # never outside, and every one of the 5 occurs


def test_min_p_threshold(rng):
    logits = crafted(rng)
    got = draws(logits, SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.2, seed=2))
    probs = ref_softmax(logits)
    assert probs[np.unique(got)].min() >= 0.2 * probs.max()


def test_top_p_support(rng):
    logits = crafted(rng)
    got = draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0, seed=3))
    assert set(got) <= set(ref_top_p(logits, 0.5))


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=4),
    SamplingParams(temperature=1.3, top_k=8, top_p=0.9, min_p=0.02, repeat_penalty=1.5, frequency_penalty=0.3,
                   presence_penalty=0.2, seed=5),
])
def test_frequencies_follow_the_chain(params):
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, 1.8, 0.9], np.float32)
    history = [0, 0, 8, 3]
    expected = ref_distribution(logits, history, params)
    freq = np.bincount(draws(logits, params, history), minlength=len(logits)) / N_DRAWS
    assert np.all(freq[expected == 0] == 0)
    # binomial standard error bound: 5 sigma per token
    sigma = np.sqrt(expected * (1 - expected) / N_DRAWS)
    assert np.all(np.abs(freq - expected) <= 5 * sigma + 1e-3), (freq, expected)


def test_same_seed_same_sequence(rng):
    logits = crafted(rng, 200)
    a = draws(logits, SamplingParams(temperature=1.0, seed=42), n=200)
    b = draws(logits, SamplingParams(temperature=1.0, seed=42), n=200)
    c = draws(logits, SamplingParams(temperature=1.0, seed=43), n=200)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_repeat_last_n_window():
    logits = np.array([1.0, 0.9, -5.0], np.float32)
    greedy = dict(temperature=0, repeat_penalty=10.0)
    # token 0 was seen, but outside a last-2 window: no penalty
    assert Sampler(SamplingParams(repeat_last_n=2, **greedy)).sample(logits, [0, 2, 2]) == 0
    assert Sampler(SamplingParams(repeat_last_n=3, **greedy)).sample(logits, [0, 2, 2]) == 1
    assert Sampler(SamplingParams(repeat_last_n=0, **greedy)).sample(logits, [0, 0]) == 0
    assert Sampler(SamplingParams(repeat_last_n=-1, **greedy)).sample(logits, [0] + [2] * 100) == 1


@pytest.mark.parametrize("t", [1e-40, 1e-300, 5e-324])
def test_tiny_temperature_is_greedy(rng, t):
    """Dividing float32 logits by a tiny temperature overflowed to inf - inf = NaN probabilities; in the limit the
    distribution is the argmax (numpy's)."""
    logits = rng.standard_normal(1000).astype(np.float32)
    sampler = Sampler(SamplingParams(temperature=t, seed=1))
    assert all(sampler.sample(logits) == int(np.argmax(logits)) for _ in range(20))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_reported(rng, temperature, bad):
    from runtime import NumericsError

    logits = rng.standard_normal(100).astype(np.float32)
    logits[17] = bad
    with pytest.raises(NumericsError, match="NaN or infinite logits"):
        Sampler(SamplingParams(temperature=temperature, seed=1)).sample(logits)
