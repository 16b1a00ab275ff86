"""Chat templates: rendering a GGUF's template equals transformers' apply_chat_template on the same GGUF;
the sandbox, the helpers transformers provides, and the ChatML fallback."""

import datetime

import pytest
from gguf_reference import reference_tokenizer

from runtime.chat import ChatTemplateError, render, template_variables
from runtime.gguf import GGUFFile

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "Héllo, wörld ✓ 你好"},
     {"role": "assistant", "content": "Hello.\n\n  Indented  "},
     {"role": "user", "content": "And now {{ not a template }} {% raw %}?"}],
]


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_matches_transformers(model_path, name):
    path = model_path(name)
    hf = reference_tokenizer(path)
    with GGUFFile(path) as g:
        template, variables = g.metadata["tokenizer.chat_template"], template_variables(g.metadata)
    assert variables == {"bos_token": hf.bos_token, "eos_token": hf.eos_token}
    for messages in CONVERSATIONS:
        for gen in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert render(messages, template, add_generation_prompt=gen, **variables) == expected


def test_chatml_fallback():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert render(messages, None) == expected
    assert render(messages, None, add_generation_prompt=False) == expected.removesuffix("<|im_start|>assistant\n")


def test_transformers_environment():
    # trim_blocks/lstrip_blocks, bos/eos variables, tojson without HTML escaping, loop controls, strftime_now
    template = ("{{ bos_token }}\n  {% for m in messages %}\n{% if loop.index > 1 %}{% break %}{% endif %}"
                "{{ m | tojson }}{% endfor %}\n|{{ strftime_now('%Y') }}{{ eos_token }}")
    out = render([{"role": "user", "content": "<a&b>"}, {"role": "user", "content": "x"}], template,
                 bos_token="<s>", eos_token="</s>")
    year = datetime.datetime.now().strftime("%Y")
    assert out == '<s>\n{"role": "user", "content": "<a&b>"}|' + year + "</s>"


def test_raise_exception_becomes_chat_template_error():
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system message first') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="system message first"):
        render([{"role": "user", "content": "x"}], template)


@pytest.mark.parametrize("template", [
    "{% set _ = messages.append({'role': 'x', 'content': 'y'}) %}",  # immutable sandbox: no mutation
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",  # no dunder access
    "{{ ''.__class__ }}{{ range.__globals__['os'] }}",
    "{% for %}",  # does not compile
])
def test_sandbox_blocks_unsafe_templates(template):
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(ChatTemplateError):
        render(messages, template)
    assert messages == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("messages", [[], "hi", [{"role": "user"}], [{"role": 1, "content": "x"}], [("user", "x")]])
def test_malformed_messages(messages):
    with pytest.raises(ChatTemplateError):
        render(messages, None)
