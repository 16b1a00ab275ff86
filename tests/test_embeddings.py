"""Embeddings: the final hidden states against transformers loading the same GGUF, the pooling and OpenAI's response
shape, and on the real SmolLM2 that similar sentences embed closer than unrelated ones."""

import numpy as np
import pytest
import torch
from gguf_reference import reference_model

from runtime import LLM, ContextOverflowError, LlambaError, UnsupportedError
from runtime.embeddings import model_pooling
from runtime.gguf import GGUFFile
from runtime.model import load_model

MODEL = "smollm2-135m-instruct"
TEXTS = ["The cat sat on the mat.", "A cat is sitting on a rug.", "The stock market fell sharply today."]
# (a, b similar to a, c unrelated): measured cosines (mean pooling) a.b 0.88-0.95, max(a.c, b.c) 0.63-0.78
TRIPLES = [TEXTS,
           ("How do I bake bread at home?", "What is a simple recipe for homemade bread?",
            "The train to Berlin leaves at noon."),
           ("Python is a popular programming language.", "Many developers write code in Python.",
            "Elephants live in large family groups."),
           ("It is raining heavily outside.", "There is a lot of rain today.", "She bought a new laptop for work."),
           ("The doctor examined the patient.", "A physician checked the sick man.",
            "The football match ended in a draw.")]


@pytest.fixture(scope="module")
def llm(model_path):
    with LLM(model_path(MODEL), n_ctx=64, n_threads=1, type_k="f32", type_v="f32") as llm:  # transformers' f32
        yield llm


def _transformers_states(path, ids) -> np.ndarray:
    """transformers' final hidden states (n, n_embd): the last of output_hidden_states, after the final norm."""
    with torch.no_grad():
        out = reference_model(path)(torch.tensor(ids)[None], output_hidden_states=True)
    return out.hidden_states[-1][0].numpy()


def test_hidden_states_and_pooling_match_transformers(llm, model_path):
    ids = llm.tokenize(TEXTS[0] + " " + TEXTS[2], special=False)
    ref = _transformers_states(model_path(MODEL), ids)  # (n, n_embd)
    ours = llm.model.forward(ids, 0, llm.model.new_cache(), hidden=True)
    assert ours.shape == ref.shape == (len(ids), 576) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())  # measured 7e-7 of the max
    text = llm.detokenize(ids)
    for pooling, pooled in (("mean", ref.mean(0)), ("cls", ref[0]), ("last", ref[-1])):
        want = pooled / np.linalg.norm(pooled)
        np.testing.assert_allclose(llm.embed(text, pooling=pooling), want, rtol=0, atol=1e-5)
        raw = llm.embed([text], pooling=pooling, normalize=False)
        assert raw.shape == (1, 576)
        np.testing.assert_allclose(raw[0], pooled, rtol=0, atol=1e-5 * np.abs(pooled).max())


def test_similar_sentences_are_closer_than_unrelated_ones(llm):
    for a, b, c in TRIPLES:
        e = llm.embed([a, b, c])  # (3, n_embd), unit rows
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
        assert e[0] @ e[1] > max(e[0] @ e[2], e[1] @ e[2]) + 0.05, (a, b, c)


def test_create_embedding_has_openai_shape(llm):
    response = llm.create_embedding(TEXTS[:2])
    n_tokens = sum(len(llm.tokenize(t, special=False)) for t in TEXTS[:2])
    assert response["object"] == "list" and response["model"] == str(llm.path)
    assert response["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    assert [(d["object"], d["index"]) for d in response["data"]] == [("embedding", 0), ("embedding", 1)]
    np.testing.assert_allclose(np.array([d["embedding"] for d in response["data"]]), llm.embed(TEXTS[:2]), atol=1e-7)
    one = llm.create_embedding(TEXTS[0], model="smollm")
    assert one["model"] == "smollm" and len(one["data"]) == 1 and len(one["data"][0]["embedding"]) == 576


def test_embedding_leaves_the_conversation_alone(llm):
    ids = llm.tokenize(TEXTS[1])
    expected = llm.generate(ids, max_tokens=6, temperature=0)
    llm.embed(TEXTS)
    assert llm.generate(ids, max_tokens=6, temperature=0) == expected
    assert llm.last_stats.n_reused == len(ids) - 1


def test_pooling_comes_from_the_gguf(model_path):
    gguf = GGUFFile(model_path(MODEL))
    model = load_model(gguf, n_ctx=8)
    assert model_pooling(model) == "mean"  # no llama.pooling_type: mean (see runtime/embeddings.py)
    for value, pooling in ((0, "mean"), (1, "mean"), (2, "cls"), (3, "last")):
        gguf.metadata["llama.pooling_type"] = value
        assert model_pooling(model) == pooling
    gguf.metadata["llama.pooling_type"] = 4  # rank: rerankers
    with pytest.raises(UnsupportedError, match="pooling_type 4"):
        model_pooling(model)
    model.close()


def test_bad_embedding_inputs_raise(llm):
    with pytest.raises(LlambaError, match="pooling must be one of"):
        llm.embed("x", pooling="max")
    with pytest.raises(LlambaError, match="text 1 is 0 tokens"):  # SmolLM2 adds no BOS token
        llm.embed(["x", ""])
    with pytest.raises(ContextOverflowError, match="text 0 is 100 tokens"):
        llm.embed(" a" * 100)
    assert llm.embed([]).shape == (0, 576)
