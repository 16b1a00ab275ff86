"""Tool calling (runtime/tools.py, the chat template's `tools`): rendering equals transformers'
apply_chat_template with tools; the calls the Qwen2.5 template itself writes parse back into the same calls,
streamed in any chunking or not; Llama 3.1's JSON format; tool_choice; and Qwen2.5 calling a tool end to end."""

import json

import numpy as np
import pytest
from gguf_reference import reference_tokenizer

from runtime import LLM, ChatTemplateError, LlambaError
from runtime.chat import check_messages, render, template_variables
from runtime.gguf import GGUFFile
from runtime.tools import ToolCallStream, parse_tool_calls, template_messages, tool_plan

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}},
         {"name": "get_time", "arguments": {}}]


def conversation(arguments_as_json_strings: bool) -> list[dict]:
    """A tool round trip: the assistant calls two tools (OpenAI sends their arguments as JSON strings,
    transformers' convention is objects), the tools answer, a second user turn."""
    def call(c, i):
        args = json.dumps(c["arguments"]) if arguments_as_json_strings else c["arguments"]
        return {"id": f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": args}}

    return [{"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": "Weather and time in Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [call(c, i) for i, c in enumerate(CALLS)]},
            {"role": "tool", "tool_call_id": "call_0", "content": '{"temperature": 18}'},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            {"role": "user", "content": "Thanks!"}]


@pytest.fixture(scope="module")
def qwen_template(model_path):
    path = model_path("qwen2.5-coder-0.5b-instruct")
    with GGUFFile(path) as g:
        return path, g.metadata["tokenizer.chat_template"], template_variables(g.metadata)


def test_check_messages_accepts_openai_messages():
    check_messages(conversation(True))
    check_messages([{"role": "assistant", "tool_calls": []}])  # no content with tool calls
    for bad in ([{"role": "user"}], [{"role": "user", "content": 3}], [{"role": "user", "content": ["x"]}],
                [{"role": "assistant", "content": None, "tool_calls": "x"}]):
        with pytest.raises(ChatTemplateError, match="message 0 must be"):
            check_messages(bad)


def test_rendering_with_tools_matches_transformers(qwen_template):
    path, template, variables = qwen_template
    hf = reference_tokenizer(path)
    messages = conversation(False)
    messages[1]["content"] = "Weather and time in Paris?"  # a string: Qwen's template concatenates content
    for tools in ([WEATHER, TIME], None):
        for gen in (True, False):
            expected = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)
            assert render(messages, template, add_generation_prompt=gen, tools=tools, **variables) == expected
    # OpenAI's JSON-string arguments reach the template as the objects transformers passes
    openai = conversation(True)
    openai[1]["content"] = "Weather and time in Paris?"
    assert (render(template_messages(openai), template, tools=[WEATHER, TIME], **variables)
            == hf.apply_chat_template(messages, tools=[WEATHER, TIME], tokenize=False, add_generation_prompt=True))


def qwen_replies(template, variables) -> list[str]:
    """Assistant turns written by the Qwen2.5 template itself, as the model would generate them."""
    replies = []
    for content in (None, "Let me check.", "Sure:\n"):
        for calls in (CALLS[:1], CALLS):
            message = {"role": "assistant", "content": content, "tool_calls": [
                {"type": "function", "function": c} for c in calls]}
            text = render([{"role": "user", "content": "x"}, message], template, add_generation_prompt=False,
                          **variables)
            turn = text[text.index("<|im_start|>assistant"):].removeprefix("<|im_start|>assistant")
            replies.append((turn.removeprefix("\n").removesuffix("<|im_end|>\n"), content, calls))
    return replies


def test_qwen_template_examples_parse_back(qwen_template):
    _, template, variables = qwen_template
    rng = np.random.default_rng(0)
    for reply, content, calls in qwen_replies(template, variables):
        got_content, got = parse_tool_calls(reply)
        assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == [
            ("function", c["name"], c["arguments"]) for c in calls]
        assert got_content == (content + "\n" if content else None)
        assert all(c["id"].startswith("call_") for c in got) and len({c["id"] for c in got}) == len(got)
        for cuts in ([], list(range(1, len(reply))), sorted(rng.choice(len(reply), 5, replace=False).tolist())):
            assert streamed(reply, cuts) == (got_content or "", [c["function"] for c in got])


def streamed(reply: str, cuts: list[int]) -> tuple[str, list[dict]]:
    """What ToolCallStream lets through and parses when `reply` comes in pieces cut at `cuts`."""
    stream = ToolCallStream()
    bounds = [0, *cuts, len(reply)]
    content = "".join(stream.feed(reply[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
    rest, calls = stream.finish()
    return content + rest, [c["function"] for c in calls]


@pytest.mark.parametrize("reply, content, calls", [
    # Llama 3.1's JSON tool calls (Meta's prompt format documentation), with and without <|python_tag|>
    ('{"name": "get_current_conditions", "parameters": {"location": "San Francisco, CA", "unit": "Fahrenheit"}}',
     None, [("get_current_conditions", {"location": "San Francisco, CA", "unit": "Fahrenheit"})]),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', None,
     [("get_weather", {"city": "Paris"})]),
    ('\n {"name": "a", "parameters": {}}; {"name": "b", "arguments": {"x": 1}}', None, [("a", {}), ("b", {"x": 1})]),
    ('Checking.<|python_tag|>{"name": "a", "parameters": {}}', "Checking.", [("a", {})]),
    # not calls: the reply is content
    ('{"answer": 42}', '{"answer": 42}', []),
    ("<|python_tag|>brave_search.call(query='x')", "<|python_tag|>brave_search.call(query='x')", []),
    ('<tool_call>\n{"name": "a", "arguments": {"x": </tool_call>', '<tool_call>\n{"name": "a", "arguments": {"x": '
                                                                   "</tool_call>", []),
    ("Plain text { with a brace", "Plain text { with a brace", []),
    ("  \n", "  \n", []),
])
def test_llama_json_and_non_calls(reply, content, calls):
    got_content, got = parse_tool_calls(reply)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    for cuts in ([], list(range(1, len(reply)))):
        text, functions = streamed(reply, cuts)
        assert text == (content or "") and [f["name"] for f in functions] == [name for name, _ in calls]


def test_tool_plan():
    assert tool_plan(None, None) == (None, None) and tool_plan([WEATHER], "none") == (None, None)
    assert tool_plan([WEATHER], "auto") == ([WEATHER], None) == tool_plan([WEATHER], None)
    shown, schema = tool_plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    assert shown == [WEATHER, TIME] and schema == {"anyOf": [
        {"type": "object", "required": ["name", "arguments"],
         "properties": {"name": {"const": "get_time"}, "arguments": TIME["function"]["parameters"]}}]}
    assert len(tool_plan([WEATHER, TIME], "required")[1]["anyOf"]) == 2
    with pytest.raises(LlambaError, match="not among the tools"):
        tool_plan([WEATHER], {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(LlambaError, match="needs tools"):
        tool_plan(None, "required")
    with pytest.raises(LlambaError, match="tool 0 must be"):
        tool_plan([{"name": "get_weather"}], "auto")
    with pytest.raises(LlambaError, match="tool_choice must be"):
        tool_plan([WEATHER], "always")


@pytest.fixture(scope="module")
def qwen(model_path):
    return LLM(model_path("qwen2.5-coder-0.5b-instruct"), n_ctx=512, n_threads=1, verbose=False)


def test_qwen_calls_a_tool(qwen):
    messages = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    qwen.reset()
    reply = qwen.create_chat_completion(messages, tools=[WEATHER], temperature=0, max_tokens=48)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["city"] == "Paris"
    qwen.reset()
    chunks = [c["choices"][0] for c in qwen.create_chat_completion(messages, tools=[WEATHER], temperature=0,
                                                                   max_tokens=48, stream=True)]
    assert chunks[0]["delta"] == {"role": "assistant"} and chunks[-1]["finish_reason"] == "tool_calls"
    (streamed_call,) = [t for c in chunks for t in c["delta"].get("tool_calls", [])]
    assert streamed_call["index"] == 0 and streamed_call["function"] == call["function"]
    # the tool's answer goes back in; with tool_choice "none" the template shows no tools and nothing is parsed
    messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": '{"celsius": 18}'}]
    answer = qwen.create_chat_completion(messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=8)
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert "tool_calls" not in answer["choices"][0]["message"]
    # a forced call: decoded under the function's schema, so it is a call even where the model would answer
    forced = qwen.create_chat_completion(messages, tools=[WEATHER], temperature=0, max_tokens=64,
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = forced["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])
