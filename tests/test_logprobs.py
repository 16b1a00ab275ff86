"""Per-token log-probabilities recorded during generation (runtime/logprobs.py) against their definition:
log_softmax of the raw logits of the same sequence, from LLM.logits (one full pass) and from transformers on
the same GGUF; the sampled token's, not the argmax's; offsets and bytes that rebuild the text."""

import numpy as np
import pytest
import torch
from gguf_reference import reference_model

from runtime import LLM
from runtime.logprobs import LogprobRecorder, log_softmax, top_ids

PROMPT = "The three primary colors are"


@pytest.fixture(scope="module")
def llm(model_path):
    # f32 KV cache: the log-probabilities are held to transformers' float32 within 2e-4
    return LLM(model_path("smollm2-135m-instruct"), n_ctx=256, n_threads=1, verbose=False, type_k="f32",
               type_v="f32")


def generated(llm, **kwargs):
    """(prompt ids, generated ids, the completion's logprobs) of a completion from an empty cache."""
    llm.reset()
    out = llm.create_completion(PROMPT, max_tokens=10, logprobs=5, **kwargs)
    return llm.tokenize(PROMPT), list(llm.last_stats.tokens), out["choices"][0]["logprobs"]


def check_against(reference: np.ndarray, tokens, logprobs, atol):
    """reference: log_softmax rows (n_generated, n_vocab) of the positions each token was sampled at."""
    np.testing.assert_allclose(logprobs["token_logprobs"], reference[np.arange(len(tokens)), tokens], atol=atol)
    for row, top in zip(reference, logprobs["top_logprobs"], strict=True):
        best = np.sort(row)[::-1][:5]
        np.testing.assert_allclose(sorted(top.values(), reverse=True)[:5], best, atol=atol)


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0,
                                                                seed=7)])
def test_logprobs_are_log_softmax_of_the_raw_logits(llm, sampling):
    prompt, tokens, logprobs = generated(llm, **sampling)
    assert len(tokens) == len(logprobs["token_logprobs"]) == 10
    ids = prompt + tokens
    rows = np.stack([log_softmax(r) for r in llm.logits(ids)[len(prompt) - 1:-1]])  # (10, n_vocab)
    # measured: <= 2e-5 apart (one token at a time against one batch: other kernels, other summation order)
    check_against(rows, tokens, logprobs, atol=2e-4)
    if not sampling.get("temperature"):
        assert tokens == rows.argmax(-1).tolist()
    else:  # a hot sampler picks tokens that are not the most likely: their own logprobs are reported
        assert tokens != rows.argmax(-1).tolist()


def test_logprobs_match_transformers(llm, model_path):
    prompt, tokens, logprobs = generated(llm, temperature=0)
    with torch.no_grad():
        logits = reference_model(model_path("smollm2-135m-instruct"))(torch.tensor([prompt + tokens])).logits[0]
    rows = torch.log_softmax(logits.double(), -1)[len(prompt) - 1:-1].numpy()  # (10, n_vocab)
    # measured: <= 1e-5 apart (float32 kernels against torch's on the same dequantized weights)
    check_against(rows, tokens, logprobs, atol=2e-4)


def test_offsets_and_bytes_rebuild_the_text(llm):
    llm.reset()
    messages = [{"role": "user", "content": "Write the Japanese word for cat."}]
    reply = llm.create_chat_completion(messages, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3)
    content = reply["choices"][0]["logprobs"]["content"]
    text = reply["choices"][0]["message"]["content"]
    assert any(len(item["bytes"]) > len(item["token"].encode()) for item in content)  # a split character
    assert b"".join(bytes(item["bytes"]) for item in content).decode(errors="replace") == text
    assert all(len(item["top_logprobs"]) == 3 for item in content)
    for item in content:
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert tops == sorted(tops, reverse=True) and item["logprob"] <= tops[0]

    out = llm.create_completion(PROMPT, max_tokens=12, temperature=0, logprobs=1)
    whole = PROMPT + out["choices"][0]["text"]
    lp = out["choices"][0]["logprobs"]
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert whole[offset:].startswith(token)


def test_recorder_bounds(llm):
    logits = np.random.default_rng(0).normal(size=llm.n_vocab).astype(np.float32)
    none, every = LogprobRecorder(llm.tokenizer, 0), LogprobRecorder(llm.tokenizer, 10 ** 9)
    none(5, logits)
    every(5, logits)
    assert none.take()[0].top == [] and len(every.take()[0].top) == llm.n_vocab
    assert every.take() == []  # handed out once
    np.testing.assert_allclose(np.exp(log_softmax(logits)).sum(), 1.0)


@pytest.mark.parametrize("n", [50, 4096, 151936, 151937])
def test_top_ids_are_the_k_largest(n):
    rng = np.random.default_rng(n)
    for logits in (rng.normal(size=n).astype(np.float32), rng.integers(0, 4, n).astype(np.float32)):  # ties too
        for k in (0, 1, 5, 64, n):
            np.testing.assert_array_equal(top_ids(logits, k), np.argsort(-logits, kind="stable")[:k])
