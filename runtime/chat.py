"""Chat templates: render a model's Jinja2 `tokenizer.chat_template` the way Hugging Face transformers does.

Templates come from model files, i.e. untrusted input: they run in Jinja2's immutable sandbox with bounds on
size, output and time (runtime/sandbox.py), with the same environment transformers sets up (trim_blocks,
lstrip_blocks, loop controls, a `tojson` that does not HTML-escape, `raise_exception`, `strftime_now`). A model
without a template gets ChatML. Every failure, including a bound reached, is a ChatTemplateError.
"""

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext

from .errors import LlambaError
from .sandbox import BoundedEnvironment, TemplateBoundError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(LlambaError):
    """A chat template failed to compile or render, or the messages are malformed."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = BoundedEnvironment(filters={"tojson": _tojson},
                             globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now},
                             trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    try:
        return env.from_string(template)
    except (jinja2.exceptions.TemplateError, RecursionError, MemoryError) as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from None


def check_messages(messages) -> list[dict]:
    """Messages as a list of {'role': str, 'content': ..., ...} dicts, or ChatTemplateError. As in OpenAI's API a
    content is a string, None or a list of typed parts ([{'type': 'text', 'text': ...}, ...]), and an assistant
    message with 'tool_calls' (a list) may have none; templates get them as they are, as transformers passes them."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and _valid_content(m)):
            raise ChatTemplateError(f"message {i} must be a dict with a string 'role' and a 'content' (a string, None "
                                    f"or a list of {{'type': ...}} parts), got {m!r}")
    return [dict(m) for m in messages]


def _valid_content(message: dict) -> bool:
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        return False
    if "content" not in message:
        return calls is not None
    content = message["content"]
    return content is None or isinstance(content, str) or (
        isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content))


def template_variables(metadata: dict) -> dict:
    """bos_token/eos_token as templates see them: the vocabulary entries named by the GGUF metadata."""
    names = metadata.get("tokenizer.ggml.tokens") or []
    out = {}
    for var, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        token = metadata.get(key)
        out[var] = names[token] if isinstance(token, int) and 0 <= token < len(names) else ""
    return out


def render(messages, template: str | None = None, bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **variables) -> str:
    """The prompt text for `messages` under `template` (ChatML when None); extra variables reach the template."""
    template_obj = _compile(template or CHATML_TEMPLATE)
    try:
        return template_obj.environment.render(template_obj, messages=check_messages(messages), bos_token=bos_token,
                                               eos_token=eos_token, add_generation_prompt=add_generation_prompt,
                                               **variables)
    except TemplateBoundError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
