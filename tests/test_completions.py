"""llama-cpp-python's high-level calls on LLM (runtime/completions.py).

llama-cpp-python's own README examples run unchanged with only the import changed; streamed chunks add up to
the unstreamed result (texts, logprobs, finish_reason); usage counts are the tokenizer's; logit_bias follows
its definition; and, where llama-cpp-python is installed, the result dicts have the structure of
llama_cpp.Llama's on the same GGUF, with the same greedy text and close log-probabilities.
"""

import json
import os

import numpy as np
import pytest

from runtime import LLM as Llama  # the only line a llama-cpp-python program changes
from runtime import LlambaError
from runtime.sampling import Sampler, SamplingParams, apply_logit_bias, apply_penalties

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def llm(model_path):
    # llama-cpp-python's README constructor, with its commented-out options on (one thread: a shared test machine
    # oversubscribed by parallel kernels slows down many times)
    return Llama(model_path=str(model_path("smollm2-135m-instruct")), n_gpu_layers=-1, seed=1337, n_ctx=512,
                 n_threads=1, verbose=False)


def greedy(llm, call, *args, **kwargs):
    """A greedy call from an empty cache (so that two calls run bit for bit the same computation)."""
    llm.reset()
    return call(*args, temperature=0, **kwargs)


def test_readme_completion(llm):
    output = llm(
        "Q: Name the planets in the solar system? A: ",  # Prompt
        max_tokens=32,  # Generate up to 32 tokens, set to None to generate up to the end of the context window
        stop=["Q:", "\n"],  # Stop generating just before the model would generate a new question
        echo=True  # Echo the prompt back in the output
    )  # Generate a completion, can also call create_completion
    assert set(output) == {"id", "object", "created", "model", "choices", "usage"}
    assert output["id"].startswith("cmpl-") and output["object"] == "text_completion"
    assert isinstance(output["created"], int) and output["model"].endswith(".gguf")
    (choice,) = output["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"} and choice["logprobs"] is None
    prompt = "Q: Name the planets in the solar system? A: "
    assert choice["text"].startswith(prompt)
    answer = choice["text"][len(prompt):]
    assert "\n" not in answer and "Q:" not in answer  # (with seed 1337 SmolLM2 starts a new line at once)
    assert choice["finish_reason"] in ("stop", "length")
    usage = output["usage"]
    assert usage["prompt_tokens"] == len(llm.tokenize(prompt))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] <= usage["prompt_tokens"] + 32


def test_readme_chat(llm):
    reply = llm.create_chat_completion(
        messages=[
            {"role": "system", "content": "You are an assistant who perfectly describes images."},
            {
                "role": "user",
                "content": "Describe this image in detail please."
            }
        ],
        max_tokens=24,
    )
    assert reply["id"].startswith("chatcmpl-") and reply["object"] == "chat.completion"
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    text = llm.chat_prompt([{"role": "system", "content": "You are an assistant who perfectly describes images."},
                            {"role": "user", "content": "Describe this image in detail please."}])
    assert reply["usage"]["prompt_tokens"] == len(llm.tokenize(text))


def test_readme_streaming(llm):
    # llama-cpp-python's examples/high_level_api/high_level_api_streaming.py, shortened
    pieces = []
    for output in llm("Question: What are the names of the planets in the solar system? Answer: ", max_tokens=16,
                      stop=["Q:", "\n"], stream=True):
        pieces.append(output["choices"][0]["text"])
    assert pieces[-1] == "" and len(pieces) > 2
    for chunk in llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, stream=True):
        delta = chunk["choices"][0]["delta"]
        if "content" in delta:
            pieces.append(delta["content"])
    assert not llm._lock.locked()


def test_stream_adds_up_to_the_unstreamed_completion(llm):
    """Greedy with a stop string that cuts a token: the cut token is counted and its logprob comes last."""
    kwargs = dict(max_tokens=12, logprobs=3, stop=["\n"])
    full = greedy(llm, llm.create_completion, PROMPT, **kwargs)
    chunks = list(greedy(llm, llm.create_completion, PROMPT, stream=True, **kwargs))
    choice = full["choices"][0]
    assert choice["text"] == " Paris." and choice["finish_reason"] == "stop"  # stopped by the "\n" token
    assert full["usage"]["completion_tokens"] == 3 == len(choice["logprobs"]["tokens"])
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert chunks[-1]["choices"][0]["logprobs"]["tokens"] == ["\n"]
    for key, values in choice["logprobs"].items():
        assert [v for lp in streamed for v in lp[key]] == values


def test_stream_adds_up_to_the_unstreamed_chat(llm):
    messages = [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Say hello"}]
    kwargs = dict(max_tokens=10, logprobs=True, top_logprobs=2)
    full = greedy(llm, llm.create_chat_completion, messages, **kwargs)
    chunks = list(greedy(llm, llm.create_chat_completion, messages, stream=True, **kwargs))
    choices = [c["choices"][0] for c in chunks]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert choices[0]["delta"] == {"role": "assistant"} and choices[-1]["delta"] == {}
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + [full["choices"][0]["finish_reason"]]
    assert "".join(c["delta"].get("content", "") for c in choices) == full["choices"][0]["message"]["content"]
    streamed = [item for c in choices if c["logprobs"] for item in c["logprobs"]["content"]]
    assert streamed == full["choices"][0]["logprobs"]["content"]
    assert len(streamed) == full["usage"]["completion_tokens"]


def test_usage_and_length(llm):
    out = greedy(llm, llm.create_completion, PROMPT, max_tokens=7, logprobs=0)
    usage = out["usage"]
    assert out["choices"][0]["finish_reason"] == "length"
    assert usage == {"prompt_tokens": len(llm.tokenize(PROMPT)), "completion_tokens": 7, "total_tokens":
                     len(llm.tokenize(PROMPT)) + 7}
    assert len(out["choices"][0]["logprobs"]["token_logprobs"]) == 7
    ids = llm.tokenize(PROMPT)
    assert llm.create_completion(ids, max_tokens=2, temperature=0)["usage"]["prompt_tokens"] == len(ids)  # ids


def test_logit_bias_definition(rng):
    logits = rng.normal(size=50).astype(np.float32)
    bias = {3: 2.5, "7": -1.0, 49: float("-inf")}  # OpenAI's JSON has string keys
    params = SamplingParams(logit_bias=bias)
    assert params.logit_bias == ((3, 2.5), (7, -1.0), (49, float("-inf")))
    expected = logits.copy()
    expected[3] += 2.5
    expected[7] -= 1.0
    expected[49] = -np.inf
    np.testing.assert_array_equal(apply_logit_bias(logits, params.logit_bias), expected)
    assert apply_logit_bias(logits, ()) is logits
    # applied before the penalties (llama.cpp's chain): greedy picks the argmax of penalties(bias(logits))
    history = [3, 3, 5]
    p = SamplingParams(temperature=0, logit_bias={3: 10.0, 5: 0.5}, repeat_penalty=1.3, presence_penalty=0.7)
    ref = apply_penalties(apply_logit_bias(logits, p.logit_bias), history, 1.3, 0.0, 0.7)
    assert Sampler(p).sample(logits, history) == int(np.argmax(ref))
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1.0})


def test_logit_bias_end_to_end(llm):
    forced = llm.tokenize(" banana")[0]
    out = greedy(llm, llm.create_completion, PROMPT, max_tokens=3, logit_bias={forced: 100.0})
    assert out["choices"][0]["text"] == llm.detokenize([forced] * 3)
    # banning the greedy token: another is picked, and logprobs still come from the raw logits, ban or not
    paris = llm.tokenize(" Paris")[0]
    out = greedy(llm, llm.create_completion, PROMPT, max_tokens=1, logprobs=1, logit_bias={str(paris): -np.inf})
    logprobs = out["choices"][0]["logprobs"]
    assert logprobs["tokens"] != [" Paris"] and logprobs["top_logprobs"][0][" Paris"] > -1.0
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.create_completion(PROMPT, logit_bias={llm.n_vocab: 1.0})


TEAM = {"type": "object", "properties": {"team": {"type": "string", "maxLength": 40}}, "required": ["team"],
        "additionalProperties": False}
YEAR = {"type": "object", "properties": {"year": {"type": "integer"}}, "required": ["year"],
        "additionalProperties": False}


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},  # any object: SmolLM2 may ramble until max_tokens, but in JSON
    {"type": "json_object", "schema": TEAM},  # llama-cpp-python's spelling
    {"type": "json_schema", "json_schema": {"name": "answer", "schema": YEAR}},  # OpenAI's
])
def test_response_format_output_parses(llm, response_format):
    import jsonschema

    messages = [{"role": "user", "content": "Who won the world series in 2020? Reply with a JSON object."}]
    out = llm.create_chat_completion(messages, response_format=response_format, temperature=0, max_tokens=64)
    choice = out["choices"][0]
    content = choice["message"]["content"]
    schema = response_format.get("schema") or response_format.get("json_schema", {}).get("schema")
    if schema is None:
        assert content.startswith("{") and (choice["finish_reason"] == "length"
                                            or isinstance(json.loads(content), dict)), choice
    else:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(content), schema)
    text = llm.create_completion("Q: Is the sky blue? A:", grammar='root ::= " yes" | " no"', temperature=0)
    assert text["choices"][0]["text"] in (" yes", " no")


def test_unsupported_and_unavailable_arguments(llm, model_path):
    with pytest.raises(LlambaError, match="typical_p=0.5 is not supported"):
        llm.create_completion(PROMPT, typical_p=0.5)
    with pytest.raises(LlambaError, match="echo with logprobs"):
        llm.create_completion(PROMPT, echo=True, logprobs=1)
    messages = [{"role": "user", "content": "Who won the world series in 2020"}]
    with pytest.raises(LlambaError, match="response_format must be"):
        llm.create_chat_completion(messages, response_format={"type": "xml"})
    assert llm.create_chat_completion(messages, response_format={"type": "text"}, max_tokens=1)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['chat_handler'\\]"):
        Llama(model_path("smollm2-135m-instruct"), chat_handler=object(), warmup=False)
    assert not llm._lock.locked()


def test_breaking_out_of_a_stream_releases_the_lock(llm):
    for _ in llm.create_completion(PROMPT, max_tokens=20, stream=True):
        break
    assert not llm._lock.locked()
    for _ in llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=20, stream=True):
        break
    assert not llm._lock.locked()


# -- llama-cpp-python itself on the same GGUF


@pytest.fixture(scope="module")
def reference(llm):
    pytest.importorskip("llama_cpp", reason='llama-cpp-python is not installed: pip install -e ".[interop]"')
    from runtime.eval.llamacpp import open_llama

    return open_llama(model_path=os.fspath(llm.path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)


def structure(x):
    """The shape of a result: dict keys and list item shapes, leaves as their kind (numbers alike)."""
    if isinstance(x, dict):
        return {k: structure(v) for k, v in x.items()}
    if isinstance(x, list):
        return [structure(v) for v in x[:1]]
    return "number" if isinstance(x, (int, float, np.number)) and not isinstance(x, bool) else type(x).__name__


def test_same_results_as_llama_cpp(llm, reference):
    kwargs = dict(max_tokens=5, logprobs=2)
    ours = greedy(llm, llm.create_completion, PROMPT, **kwargs)
    theirs = reference.create_completion(PROMPT, temperature=0, **kwargs)
    assert structure(ours) == structure(theirs)
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"] == " Paris.\n\nThe"
    assert ours["usage"] == theirs["usage"]
    ours_lp, theirs_lp = ours["choices"][0]["logprobs"], theirs["choices"][0]["logprobs"]
    assert ours_lp["tokens"] == theirs_lp["tokens"] and ours_lp["text_offset"] == theirs_lp["text_offset"]
    # measured: at most 0.05 apart (Q4_1, llamba's float kernels against llama.cpp's)
    np.testing.assert_allclose(ours_lp["token_logprobs"], theirs_lp["token_logprobs"], atol=0.15)

    ours_chunks = list(greedy(llm, llm.create_completion, PROMPT, stream=True, max_tokens=3))
    theirs_chunks = list(reference.create_completion(PROMPT, stream=True, max_tokens=3, temperature=0))
    assert [structure(c) for c in ours_chunks] == [structure(c) for c in theirs_chunks]

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"}]
    ours = greedy(llm, llm.create_chat_completion, messages, max_tokens=6)
    theirs = reference.create_chat_completion(messages, max_tokens=6, temperature=0)
    assert structure(ours) == structure(theirs) and ours["usage"] == theirs["usage"]
    assert ours["choices"][0]["message"] == theirs["choices"][0]["message"]
    ours_chunks = list(greedy(llm, llm.create_chat_completion, messages, stream=True, max_tokens=6))
    theirs_chunks = list(reference.create_chat_completion(messages, stream=True, max_tokens=6, temperature=0))
    assert [structure(c) for c in ours_chunks] == [structure(c) for c in theirs_chunks]
