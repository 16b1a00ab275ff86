"""Tool calling: OpenAI's `tools` / `tool_choice` for a chat template, and the calls parsed out of a reply.

Reply formats parsed into OpenAI `tool_calls`:
- Qwen2.5 (Hermes): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call;
- Llama 3.1 JSON: a reply that is `{"name": ..., "parameters": {...}}` (several separated by ";"), or such JSON
  after `<|python_tag|>`. Llama's built-in tools' Python form (`brave_search.call(query=...)`) stays text.
Content before the first call is the message's content. A reply whose tool-call part does not parse is all
content, with no calls, as in llama.cpp's server. The markers are special tokens: parse text generated with
special=True.
"""

import json
import uuid

from .errors import LlambaError
from .generate import StopMatcher

MARKERS = ("<tool_call>", "<|python_tag|>")  # where calls begin anywhere in a reply (a leading "{" too)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content, OpenAI tool_calls) of a reply; (text, []) when it holds no tool calls that parse. The content is
    None when only whitespace precedes the calls."""
    start = _calls_start(text)
    calls = None if start is None else _parse_calls(text[start:])
    if not calls:
        return text, []
    content = text[:start]
    return (content if content.strip() else None), calls


def _calls_start(text: str) -> int | None:
    """Where a reply's tool calls would begin: 0 when it opens with "{", else at its first marker."""
    if text.lstrip().startswith("{"):
        return 0
    found = [i for i in (text.find(m) for m in MARKERS) if i >= 0]
    return min(found) if found else None


def _parse_calls(text: str) -> list[dict] | None:
    """The calls of `text` (from a marker or "{" on), or None unless all of it is calls: JSON objects, each
    optionally in <tool_call> tags, separated by whitespace or ";"."""
    text = text.removeprefix("<|python_tag|>").replace("<tool_call>", " ").replace("</tool_call>", " ")
    decoder, calls, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] == ";"):
            i += 1
        if i == len(text):
            return calls
        try:
            obj, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        call = _openai_call(obj)
        if call is None:
            return None
        calls.append(call)


def _openai_call(obj) -> dict | None:
    """{"name": ..., "arguments" or "parameters": ...} as an OpenAI tool call (arguments a JSON string)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters"))
    if not isinstance(args, (dict, str)):
        return None
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": arguments}}


class ToolCallStream:
    """Streams a reply's content while holding back what may be tool calls, so that the pieces it lets through
    plus `finish()` give what parse_tool_calls gives for the whole reply: leading whitespace is held until other
    content comes, and a reply opening with "{" or the text from a marker on is held for the parser."""

    def __init__(self):
        self.matcher = StopMatcher(MARKERS)
        self.lead = ""  # leading whitespace, held
        self.emitted = False  # content other than whitespace went out
        self.calls_text = None  # the text from where the calls begin, once they have begun

    def feed(self, text: str) -> str:
        """The content that can be streamed now."""
        if self.calls_text is not None:
            self.calls_text += text
            return ""
        if not self.emitted and not self.matcher.held and text.lstrip().startswith("{"):  # the reply opens with "{"
            self.calls_text = text
            return ""
        out, hit = self.matcher.feed(text)
        if hit:
            self.calls_text = self.matcher.flush()
        if not self.emitted:
            out, self.lead = self.lead + out, ""
            if not out.strip():
                self.lead = out
                return ""
            self.emitted = True
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(the content still held, the tool calls): held text that is not calls is content after all."""
        if self.calls_text is None:
            return self.lead + self.matcher.flush(), []
        calls = _parse_calls(self.calls_text)
        return ("", calls) if calls else (self.lead + self.calls_text, [])


def tool_plan(tools, tool_choice) -> tuple[list | None, dict | None]:
    """(the tools to show the template, None when none are offered and the reply is not parsed for calls; the JSON
    schema a forced call must follow, or None) for OpenAI's `tools` and `tool_choice` ("auto", "none",
    "required" or {"type": "function", "function": {"name": ...}})."""
    forced = tool_choice == "required" or isinstance(tool_choice, dict)
    if tool_choice not in (None, "auto", "none") and not forced:
        raise LlambaError(f"tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', 'function': "
                          f"{{'name': ...}}}}, got {tool_choice!r}")
    if not tools:
        if forced:
            raise LlambaError(f"tool_choice={tool_choice!r} needs tools")
        return None, None
    names = [_function(t, i)["name"] for i, t in enumerate(tools)]
    if tool_choice == "none":
        return None, None
    if not forced:
        return list(tools), None
    if tool_choice == "required":
        chosen = list(tools)
    else:
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise LlambaError(f"tool_choice names the function {name!r}, which is not among the tools {names}")
        chosen = [tools[names.index(name)]]
    return list(tools), {"anyOf": [_call_schema(_function(t, 0)) for t in chosen]}


def _function(tool, i: int) -> dict:
    """The function of an OpenAI tool {"type": "function", "function": {"name": ..., "parameters": ...}}."""
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise LlambaError(f"tool {i} must be {{'type': 'function', 'function': {{'name': str, 'parameters': "
                          f"{{...}}}}}}, got {tool!r}")
    return function


def _call_schema(function: dict) -> dict:
    """The JSON schema of one call as the parser reads it: {"name": <the name>, "arguments": <its parameters>}."""
    return {"type": "object", "required": ["name", "arguments"],
            "properties": {"name": {"const": function["name"]},
                           "arguments": function.get("parameters", {"type": "object"})}}


def template_messages(messages) -> list:
    """OpenAI messages the way chat templates expect them (transformers' convention): the arguments of an
    assistant's tool calls as objects where OpenAI sends JSON strings. Other messages are passed as they are."""
    return [_object_arguments(m) if isinstance(m, dict) and isinstance(m.get("tool_calls"), list) else m
            for m in messages]


def _object_arguments(message: dict) -> dict:
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            try:
                call = {**call, "function": {**function, "arguments": json.loads(function["arguments"])}}
            except ValueError:
                pass  # not JSON: the template gets the string
        calls.append(call)
    return {**message, "tool_calls": calls}
