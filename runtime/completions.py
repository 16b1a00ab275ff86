"""llama-cpp-python's high-level calls on LLM: `create_completion` (also `LLM.__call__`) and
`create_chat_completion`, with llama_cpp.Llama 0.3.x's arguments, defaults and OpenAI-shaped dict results,
streamed (chunk dicts, the last carrying finish_reason) or not. Code written for llama_cpp.Llama runs with only
the import changed: `from runtime import LLM as Llama`.

Both run on LLM.stream, generate's `on_token` hook recording log-probabilities (runtime/logprobs.py) and
runtime/tools.py parsing tool calls. A streamed call's chunks add up to the same call unstreamed: their texts
to its text, their logprobs to its logprobs (tokens whose text a stop string cut come with the last chunk).

Not supported, an error unless left at llama-cpp-python's default: suffix, typical_p, tfs_z, mirostat_mode,
stopping_criteria, logits_processor, and echo with logprobs (it needs the prompt's logits). Structured output
(response_format, grammar, a forced tool_choice) is runtime/grammar.py's token mask: see `_grammar`.
"""

import time
import uuid
from collections.abc import Iterator
from contextlib import closing

from .errors import LlambaError
from .generate import GenerationStats
from .logprobs import LogprobRecorder, chat_logprobs, completion_logprobs
from .tools import ToolCallStream, parse_tool_calls, template_messages, tool_plan

FINISH = {"eog": "stop", "stop": "stop", "cancelled": "stop", "closed": "stop", "length": "length",
          "context": "length"}  # GenerationStats.stop_reason -> OpenAI's finish_reason
UNSUPPORTED = {"suffix": None, "typical_p": 1.0, "tfs_z": 1.0, "mirostat_mode": 0, "stopping_criteria": None,
               "logits_processor": None}  # llama-cpp-python arguments llamba has only at these values
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty",
            "seed")  # the arguments of both calls that are SamplingParams fields (logit_bias too, None meaning none)
LLAMA_IGNORED = frozenset({  # llama_cpp.Llama keywords that tune only llama.cpp's speed, memory or devices
    "split_mode", "tensor_split", "use_mmap", "use_mlock", "n_batch", "n_ubatch",
    "n_threads_batch", "logits_all", "offload_kqv", "flash_attn", "op_offload", "last_n_tokens_size", "numa",
    "no_perf"})
LLAMA_RANDOM_SEEDS = (-1, 0xFFFFFFFF)  # llama.cpp's "random seed" values (LLAMA_DEFAULT_SEED)


def llama_init_args(n_ctx: int | None, seed: int | None, kwargs: dict) -> tuple[int | None, int | None]:
    """(n_ctx, seed) for LLM() from llama_cpp.Llama's conventions (n_ctx 0: the model's; seed -1 or
    LLAMA_DEFAULT_SEED: random); Llama keywords in LLAMA_IGNORED are accepted, any other is a TypeError."""
    unknown = sorted(set(kwargs) - LLAMA_IGNORED)
    if unknown:
        raise TypeError(f"LLM() got unexpected keyword arguments {unknown} (of llama_cpp.Llama's, only the "
                        f"performance keywords {sorted(LLAMA_IGNORED)} are accepted, and ignored)")
    return (None if n_ctx == 0 else n_ctx), (None if seed in LLAMA_RANDOM_SEEDS else seed)


def create_completion(llm, prompt, suffix=None, max_tokens=16, temperature=0.8, top_p=0.95, min_p=0.05,
                      typical_p=1.0, logprobs=None, echo=False, stop=(), frequency_penalty=0.0,
                      presence_penalty=0.0, repeat_penalty=1.0, top_k=40, stream=False, seed=None, tfs_z=1.0,
                      mirostat_mode=0, mirostat_tau=5.0, mirostat_eta=0.1, model=None, stopping_criteria=None,
                      logits_processor=None, grammar=None, logit_bias=None, *, cancel=None, stream_options=None):
    """`prompt` (text, or token ids) continued, as llama_cpp.Llama.create_completion: a "text_completion" dict,
    or with stream=True an iterator of chunk dicts. max_tokens None or <= 0: until the context is full.
    `logprobs` (how many alternatives) adds each token's log-probability; `echo` puts the prompt before the
    text; logit_bias maps token ids to biases. `cancel` (llamba's): a threading.Event that stops the generation.
    `stream_options={"include_usage": True}` (OpenAI's): a last chunk with no choices carries the usage."""
    _check_supported(suffix=suffix, typical_p=typical_p, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                     stopping_criteria=stopping_criteria, logits_processor=logits_processor)
    if echo and logprobs is not None:
        raise LlambaError("echo with logprobs is not supported (it needs the prompt's log-probabilities)")
    ids = llm.tokenize(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    prompt_text = prompt if isinstance(prompt, str) else llm.detokenize(ids)
    gen = _Generation(llm, ids, max_tokens, stop, _sampling(locals()), logprobs, None, cancel,
                      _grammar(None, grammar, None))
    shape = None if logprobs is None else (lambda e: completion_logprobs(llm.tokenizer, e, len(prompt_text)))
    head = _head("cmpl", model or str(llm.path))
    prefix = prompt_text if echo else ""
    if stream:
        return _with_usage(_completion_chunks(gen, head, prefix, shape), gen, head, "text_completion", stream_options)
    text, entries = gen.collect()
    choice = {"text": prefix + text, "index": 0, "logprobs": shape(entries) if shape else None,
              "finish_reason": gen.finish_reason}
    return {**head, "object": "text_completion", "choices": [choice], "usage": gen.usage()}


def create_chat_completion(llm, messages, functions=None, function_call=None, tools=None, tool_choice=None,
                           temperature=0.2, top_p=0.95, top_k=40, min_p=0.05, typical_p=1.0, stream=False, stop=(),
                           seed=None, response_format=None, max_tokens=None, presence_penalty=0.0,
                           frequency_penalty=0.0, repeat_penalty=1.0, tfs_z=1.0, mirostat_mode=0, mirostat_tau=5.0,
                           mirostat_eta=0.1, model=None, logits_processor=None, grammar=None, logit_bias=None,
                           logprobs=None, top_logprobs=None, *, cancel=None, stream_options=None):
    """The assistant's reply to OpenAI-style `messages`, as llama_cpp.Llama.create_chat_completion: a
    "chat.completion" dict, or with stream=True "chat.completion.chunk" dicts (the first carrying the role).
    With `tools`, the template shows them and calls in the reply come back as `tool_calls` (finish_reason
    "tool_calls"); `logprobs=True` with `top_logprobs` alternatives adds log-probabilities. Other arguments as in
    create_completion."""
    _check_supported(typical_p=typical_p, tfs_z=tfs_z, mirostat_mode=mirostat_mode, logits_processor=logits_processor)
    tools, tool_choice = _legacy_functions(functions, function_call, tools, tool_choice)
    shown, forced = tool_plan(tools, tool_choice)
    constraint = _grammar(response_format, grammar, forced)
    ids, stop = llm._chat_input(template_messages(messages), stop or (), tools=shown)
    parse = shown is not None  # the markup of calls is special tokens: kept in the text for the parser
    gen = _Generation(llm, ids, max_tokens, stop, _sampling(locals()), (top_logprobs or 0) if logprobs else None,
                      True if parse else None, cancel, constraint)
    shape = (lambda e: chat_logprobs(llm.tokenizer, e)) if logprobs else None
    head = _head("chatcmpl", model or str(llm.path))
    if stream:
        chunks = _chat_chunks(gen, head, shape, ToolCallStream() if parse else None)
        return _with_usage(chunks, gen, head, "chat.completion.chunk", stream_options)
    text, entries = gen.collect()
    content, calls = parse_tool_calls(text) if parse else (text, [])
    message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    choice = {"index": 0, "message": message, "logprobs": shape(entries) if shape else None,
              "finish_reason": "tool_calls" if calls else gen.finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": gen.usage()}


class _Generation:
    """One generation under the builders: iterating gives (text piece, the TokenLogprobs of the tokens generated
    since the previous piece); finish_reason and usage are final once it is exhausted."""

    def __init__(self, llm, ids, max_tokens, stop, sampling, top_logprobs, special, cancel, constraint):
        self.n_prompt, self.stats = len(ids), GenerationStats()
        special = llm.special if special is None else special
        self.recorder = None if top_logprobs is None else LogprobRecorder(llm.tokenizer, top_logprobs, special)
        limit = None if max_tokens is None or max_tokens <= 0 else max_tokens
        self.pieces = llm.stream(ids, limit, stop=stop or (), cancel=cancel, special=special, on_token=self.recorder,
                                 stats=self.stats, **sampling, **constraint)

    def __iter__(self) -> Iterator[tuple[str, list]]:
        with closing(self.pieces):  # a consumer that stops early releases the LLM
            for piece in self.pieces:
                yield piece, self.take()

    def take(self) -> list:
        return self.recorder.take() if self.recorder else []

    def collect(self) -> tuple[str, list]:
        """The whole text and the TokenLogprobs of all its tokens."""
        pieces, entries = [], []
        for piece, new in self:
            pieces.append(piece)
            entries += new
        return "".join(pieces), entries + self.take()

    @property
    def finish_reason(self) -> str:
        return FINISH[self.stats.stop_reason]

    def usage(self) -> dict:
        n = len(self.stats.tokens)
        return {"prompt_tokens": self.n_prompt, "completion_tokens": n, "total_tokens": self.n_prompt + n}


def _completion_chunks(gen: _Generation, head: dict, prefix: str, shape) -> Iterator[dict]:
    def chunk(text, entries, finish_reason=None):
        choice = {"text": text, "index": 0, "logprobs": shape(entries) if shape and entries else None,
                  "finish_reason": finish_reason}
        return {**head, "object": "text_completion", "choices": [choice]}

    if prefix:
        yield chunk(prefix, [])
    for text, entries in gen:
        yield chunk(text, entries)
    yield chunk("", gen.take(), gen.finish_reason)


def _chat_chunks(gen: _Generation, head: dict, shape, calls_stream: ToolCallStream | None) -> Iterator[dict]:
    pending = []  # TokenLogprobs whose text has not gone out yet

    def chunk(delta, finish_reason=None):
        logprobs = shape(pending) if shape and pending else None
        pending.clear()
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

    yield chunk({"role": "assistant"})
    for text, entries in gen:
        pending += entries
        content = calls_stream.feed(text) if calls_stream else text
        if content:
            yield chunk({"content": content})
    pending += gen.take()
    content, calls = calls_stream.finish() if calls_stream else ("", [])
    if content:
        yield chunk({"content": content})
    if calls:
        yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
    yield chunk({}, "tool_calls" if calls else gen.finish_reason)


def _with_usage(chunks: Iterator[dict], gen: _Generation, head: dict, kind: str, options) -> Iterator[dict]:
    """The chunks, then (with OpenAI's stream_options={"include_usage": True}) one with no choices and the usage."""
    with closing(chunks):
        yield from chunks
    if (options or {}).get("include_usage"):
        yield {**head, "object": kind, "choices": [], "usage": gen.usage()}


def _sampling(args: dict) -> dict:
    """The SamplingParams keywords among a call's arguments (its locals())."""
    return {**{name: args[name] for name in SAMPLING}, "logit_bias": args["logit_bias"] or ()}


def _head(kind: str, model: str) -> dict:
    return {"id": f"{kind}-{uuid.uuid4()}", "created": int(time.time()), "model": model}


def _check_supported(**args):
    for name, value in args.items():
        if value != UNSUPPORTED[name]:
            raise LlambaError(f"{name}={value!r} is not supported by llamba (only llama-cpp-python's default, "
                              f"{UNSUPPORTED[name]!r})")


def _legacy_functions(functions, function_call, tools, tool_choice):
    """The deprecated `functions` / `function_call` as tools / tool_choice, as llama-cpp-python converts them."""
    if functions is not None:
        tools = [{"type": "function", "function": f} for f in functions]
    if isinstance(function_call, str):
        tool_choice = function_call
    elif isinstance(function_call, dict):
        tool_choice = {"type": "function", "function": {"name": function_call.get("name")}}
    return tools, tool_choice


def _grammar(response_format, grammar, forced_call) -> dict:
    """LLM.stream's `grammar` keyword ({} for free text) for `grammar` (a runtime.grammar.Grammar or a GBNF string),
    a forced tool call's schema, or a response_format: "text", "json_object" with an optional "schema" (as
    llama-cpp-python spells it), or OpenAI's "json_schema"."""
    from .grammar import Grammar  # llguidance is imported only when a call constrains its output

    if grammar is not None:
        return {"grammar": grammar}
    if forced_call is not None:
        return {"grammar": Grammar.from_json_schema(forced_call)}
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return {}
    schema = None
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")
    else:
        raise LlambaError("response_format must be {'type': 'text'}, {'type': 'json_object', 'schema': ...} or "
                          f"{{'type': 'json_schema', 'json_schema': {{'schema': ...}}}}, got {response_format!r}")
    return {"grammar": Grammar.from_json_schema(schema) if schema else Grammar.json_object()}
