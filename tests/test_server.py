"""`llamba serve` on loopback ports, driven by the official `openai` client (and httpx for raw HTTP).

Oracle: the same calls on an in-process LLM (runtime/completions.py, itself checked against llama-cpp-python and
transformers); streaming must add up to non-streaming; concurrent greedy streams must equal their solo runs.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).parent.parent
KEY = "sekret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`llamba serve ARGS` in a child process on a free loopback port, stopped at close()."""

    def __init__(self, model_path, *args, host="127.0.0.1"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "-m", str(model_path), "--host",
                                      host, "--port", str(self.port), "-t", "1", *map(str, args)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def client(self, key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path(MODEL), "-np", 4, "-c", 512)
    yield s
    s.close()


@pytest.fixture(scope="module")
def llm(model_path):
    from runtime import LLM

    return LLM(model_path(MODEL), n_ctx=512, n_threads=1, warmup=False)


CHAT = [{"role": "user", "content": "Name three colours."}]


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["slots_idle"] == 4


def test_chat_matches_the_library(server, llm):
    reply = server.client().chat.completions.create(model="x", messages=CHAT, temperature=0, max_tokens=24)
    llm.reset()
    ref = llm.create_chat_completion(CHAT, temperature=0, max_tokens=24)
    assert reply.choices[0].message.content == ref["choices"][0]["message"]["content"]
    assert reply.choices[0].finish_reason == ref["choices"][0]["finish_reason"]
    assert reply.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == ref["usage"]["completion_tokens"]
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"


def test_streaming_equals_non_streaming(server):
    client = server.client()
    whole = client.chat.completions.create(model="x", messages=CHAT, temperature=0, max_tokens=24)
    chunks = list(client.chat.completions.create(model="x", messages=CHAT, temperature=0, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions(server, llm):
    client = server.client()
    out = client.completions.create(model="x", prompt="The capital of France is", temperature=0, max_tokens=8)
    llm.reset()
    ref = llm.create_completion("The capital of France is", temperature=0, max_tokens=8)
    assert out.choices[0].text == ref["choices"][0]["text"] and out.object == "text_completion"
    ids = llm.tokenize("The capital of France is")
    by_ids = client.completions.create(model="x", prompt=ids, temperature=0, max_tokens=8)
    assert by_ids.choices[0].text == out.choices[0].text
    echo = client.completions.create(model="x", prompt="Hello", temperature=0, max_tokens=4, echo=True)
    assert echo.choices[0].text.startswith("Hello")
    streamed = client.completions.create(model="x", prompt="The capital of France is", temperature=0, max_tokens=8,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text


def test_logprobs(server):
    reply = server.client().chat.completions.create(model="x", messages=CHAT, temperature=0, max_tokens=6,
                                                    logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy: the best one


def test_json_schema(server):
    import jsonschema

    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}},
              "required": ["colour"], "additionalProperties": False}
    reply = server.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Pick a colour, answer in JSON."}], temperature=0,
        max_tokens=48, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_embeddings(server, llm):
    import numpy as np

    out = server.client().embeddings.create(model="x", input=["a cat", "a dog"])
    got = np.array([d.embedding for d in out.data])  # (2, n_embd)
    np.testing.assert_allclose(got, llm.embed(["a cat", "a dog"]), atol=1e-5)
    assert out.usage.prompt_tokens > 0 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    plain = httpx.post(server.url + "/v1/embeddings", json={"input": "a cat", "encoding_format": "float"}).json()
    np.testing.assert_allclose(plain["data"][0]["embedding"], got[0], atol=1e-6)  # the client decoded base64


def test_tokenize_detokenize(server, llm):
    ids = httpx.post(server.url + "/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert ids == llm.tokenize("Hello world", add_bos=False)
    assert httpx.post(server.url + "/detokenize", json={"tokens": ids}).json() == {"content": "Hello world"}
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and "token ids" in bad.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": CHAT, "temperature": 5}, "temperature"),
    ({"messages": CHAT, "n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": CHAT, "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": CHAT, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": CHAT, "response_format": {"type": "xml"}}, None),
    ({}, "messages"),
])
def test_bad_requests_are_400(server, body, param):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "x", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


def test_malformed_json_unknown_route_and_long_prompt(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"content-type":
                                                                                        "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="x", prompt="word " * 600, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "context holds 512" in e.value.message


def test_concurrent_streams_equal_their_solo_runs(server):
    # prompts whose greedy replies run to max_tokens: every stream decodes the same number of steps, so how many
    # ran together depends on the scheduler, not on which reply ends first
    prompts = ["Count from 1 to 40.", "Write a long poem about the sea.", "Name three colours.",
               "Write a story about a dragon."]
    client = server.client()

    def run(prompt):
        stream = client.chat.completions.create(model="x", messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=32, stream=True)
        chunks = [c for c in stream if c.choices]
        assert chunks[-1].choices[0].finish_reason == "length", (prompt, [c.choices[0].delta.content for c in chunks])
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    solo = [run(p) for p in prompts]
    before = httpx.get(server.url + "/health").json()
    together = [None] * len(prompts)
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(prompts[i])))
               for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == solo
    after = httpx.get(server.url + "/health").json()
    steps, tokens = (after[k] - before[k] for k in ("decode_steps", "decoded_tokens"))
    assert tokens / steps > 2, (steps, tokens)  # the streams' decode steps ran together, several per pass


def test_disconnect_frees_the_slot(server):
    body = {"model": "x", "messages": CHAT, "max_tokens": 400, "stream": True, "temperature": 1.0, "seed": 1}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/health").json()["slots_idle"] < 4:
        assert time.monotonic() < deadline, "the slot of a disconnected client stayed busy"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def guarded(model_path):
    s = Server(model_path(MODEL), "-np", 1, "--max-queue", 1, "--api-key", KEY, "--cors-origin",
               "http://app.example", "-c", 256)
    yield s
    s.close()


def test_api_key_and_cors(guarded, server):
    with pytest.raises(openai.AuthenticationError):
        guarded.client("wrong").models.list()
    assert guarded.client(KEY).models.list().data
    assert httpx.get(guarded.url + "/health").status_code == 200  # health needs no key
    pre = httpx.options(guarded.url + "/v1/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert pre.headers.get("access-control-allow-origin") == "http://app.example"
    plain = httpx.options(server.url + "/v1/chat/completions", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in plain.headers  # CORS is off unless asked for


def test_flood_beyond_the_queue_gets_503(guarded):
    """One slot, a queue of one: of 6 simultaneous long requests, at least 4 are refused with 503 and Retry-After,
    the others complete; afterwards the server answers normally."""
    body = {"model": "x", "messages": CHAT, "max_tokens": 32, "temperature": 0}
    codes, retry = [], []

    def send():
        r = httpx.post(guarded.url + "/v1/chat/completions", json=body, timeout=120,
                       headers={"Authorization": f"Bearer {KEY}"})
        codes.append(r.status_code)
        if r.status_code == 503:
            retry.append(r.headers.get("retry-after"))
            assert r.json()["error"]["type"] == "server_busy"

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes).count(200) >= 1 and codes.count(503) >= 4 and set(codes) <= {200, 503}, codes
    assert all(r == "1" for r in retry)
    assert guarded.client(KEY).chat.completions.create(model="x", messages=CHAT, max_tokens=2).choices


def test_non_loopback_needs_a_key(model_path):
    from test_cli import llamba

    code, out, err = llamba("serve", "-m", model_path(MODEL), "--host", "0.0.0.0", "--port", free_port())
    assert code == 1 and err.startswith("error: ") and "--api-key" in err and err.count("\n") == 1, err
