"""Structured output (runtime/grammar.py): sampled text under a grammar is always in its language.

The tokenizer bridge is checked token by token against llamba's own decoding (byte-level BPE, SentencePiece with
byte tokens, SentencePiece with a space prefix); then real models sample under JSON schemas, "any JSON object",
GBNF and Lark grammars with several seeds at temperature 1 and greedily, and every output must parse and
validate, ending because the grammar was complete (stop_reason "eog"), never at max_tokens.
"""

import gc
import json
import re
import weakref

import jsonschema
import numpy as np
import pytest

from runtime import GrammarError, LlambaError
from runtime.gguf import GGUFFile
from runtime.grammar import Grammar, constraint_from_response_format, ll_tokenizer
from runtime.llm import LLM
from runtime.sampling import Sampler, SamplingParams
from runtime.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "pets": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["name", "age", "color", "pets"],
    "additionalProperties": False,
}
ANSWER = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
          "additionalProperties": False}
ASK = [{"role": "user", "content": "Describe a person as a JSON object."}]


def _tokenizer(path) -> Tokenizer:
    with GGUFFile(path) as f:
        return Tokenizer.from_gguf(f.metadata)


@pytest.fixture(scope="module")
def smollm(model_path):
    return LLM(model_path("smollm2-135m-instruct"), n_ctx=256, n_threads=1)


@pytest.fixture(scope="module")
def qwen(model_path):
    return LLM(model_path("qwen2.5-coder-0.5b-instruct"), n_ctx=256, n_threads=1)


# ---------------------------------------------------------------- the tokenizer bridge


@pytest.mark.parametrize("source", ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m", "ggml-vocab-llama-spm.gguf"])
def test_llguidance_sees_the_bytes_llamba_decodes(source, model_path, vocab_dir):
    """Every id: the bytes llguidance has are what llamba decodes it to (after an ASCII token, so a SentencePiece
    space prefix is not stripped), and it is special exactly when llamba's text output drops it."""
    tok = _tokenizer(vocab_dir / source if source.endswith(".gguf") else model_path(source))
    ll = ll_tokenizer(tok)
    anchor = tok.encode("a", add_bos=False)[-1]
    head = tok.decode([anchor])
    empty = []
    for i in range(tok.n_vocab):
        piece = tok.token_bytes(i)
        if not piece:  # unused padding entries: no bytes, never allowed (below)
            empty.append(i)
        elif piece == b"\xff":  # llguidance's special-token marker byte; never part of UTF-8 text, so never allowed
            assert ll.is_special_token(i)
        elif tok.is_markup(i):
            assert ll.is_special_token(i) and ll.decode_bytes([i]) == piece, i
        else:
            assert not ll.is_special_token(i) and ll.decode_bytes([i]) == piece, i
            assert tok.decode([anchor, i]) == head + ll.decode_str([i]), i
    text = 'Hello world {"a": [1, 2]}\n'  # llguidance's text -> ids adds no space prefix
    assert ll.decode_str(ll.tokenize_str(text)) == text
    anything = Grammar.from_lark(r"start: /(.|\n)*/").constraint(tok)
    masked = anything.mask(np.zeros(tok.n_vocab, np.float32))
    assert np.isneginf(masked[empty]).all() and np.isfinite(masked).sum() > tok.n_vocab // 2


def test_cached_llguidance_tokenizer_does_not_keep_its_tokenizer_alive(vocab_dir):
    tok = _tokenizer(vocab_dir / "ggml-vocab-llama-spm.gguf")
    alive = weakref.ref(tok)
    Grammar.json_object().constraint(tok)
    del tok
    gc.collect()
    assert alive() is None


# ---------------------------------------------------------------- the sampler's mask


def test_sampler_only_draws_allowed_tokens(model_path, rng):
    """Random logits, sampled and greedy: every token is one the mask allows, and greedy is the best allowed one."""
    tok = _tokenizer(model_path("smollm2-135m-instruct"))
    grammar = Grammar.from_json_schema(SCHEMA)
    for seed in range(3):
        constraint = grammar.constraint(tok)
        sampled = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed), constraint)
        for _ in range(20):
            logits = rng.normal(size=tok.n_vocab).astype(np.float32)
            allowed = np.isfinite(constraint.mask(logits))
            assert Sampler(SamplingParams(temperature=0), constraint).sample(logits) == np.argmax(
                np.where(allowed, logits, -np.inf))
            token = sampled.sample(logits)
            assert allowed[token]
            sampled.accept(token)
            if sampled.finished:
                break


# ---------------------------------------------------------------- real models


@pytest.mark.parametrize("which", ["smollm", "qwen"])
def test_sampled_json_validates_against_the_schema(which, request):
    llm = request.getfixturevalue(which)
    grammar = Grammar.from_json_schema(SCHEMA)
    for seed in range(5) if which == "smollm" else range(2):
        text = llm.chat(ASK, grammar=grammar, temperature=1.0, seed=seed, max_tokens=200)
        assert llm.last_stats.stop_reason == "eog", text  # complete: the grammar ended it, not max_tokens
        jsonschema.validate(json.loads(text), SCHEMA)
    greedy = llm.chat(ASK, grammar=grammar, temperature=0, max_tokens=200)
    assert llm.last_stats.stop_reason == "eog"
    jsonschema.validate(json.loads(greedy), SCHEMA)


def test_json_object_and_response_formats(smollm):
    """Any JSON object; and the two response_format spellings of one schema give the same constrained text."""
    ask = [{"role": "user", "content": 'Reply with a JSON object like {"answer": "yes"}. Is the sea salty?'}]
    for seed in range(3):
        text = smollm.chat(ask, grammar=Grammar.json_object(), temperature=1.0, seed=seed, max_tokens=120)
        assert smollm.last_stats.stop_reason == "eog", text
        assert isinstance(json.loads(text), dict)
    formats = [{"type": "json_object", "schema": ANSWER}, {"type": "json_schema", "json_schema": {"schema": ANSWER}}]
    texts = []
    for response_format in formats:
        sampler = Sampler(smollm.sampling_params(temperature=1.0, seed=7),
                          constraint_from_response_format(response_format, smollm.tokenizer))
        texts.append(_generate(smollm, ask, sampler))
    assert texts[0] == texts[1]
    jsonschema.validate(json.loads(texts[0]), ANSWER)
    assert constraint_from_response_format({"type": "text"}, smollm.tokenizer) is None
    assert constraint_from_response_format(None, smollm.tokenizer) is None
    assert constraint_from_response_format({"type": "json_object"}, smollm.tokenizer) is not None


def _generate(llm, messages, sampler):
    from runtime.generate import Context, generate

    ids = llm.tokenize(llm.chat_prompt(messages), add_bos=False)
    return "".join(generate(Context(llm.model), llm.tokenizer, ids, 200, sampler))


@pytest.mark.parametrize("which", ["smollm", "qwen"])
def test_gbnf_and_lark_grammars(which, request):
    llm = request.getfixturevalue(which)
    ask = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    numbers = 'root ::= [1-9] [0-9]? (", " [1-9] [0-9]?){1,3}'
    lark = 'start: COLOR " " COLOR\nCOLOR: "red" | "green" | "blue"'
    for seed in range(4) if which == "smollm" else range(2):
        assert llm.chat(ask, grammar='root ::= "yes" | "no"', temperature=1.0, seed=seed) in ("yes", "no")
        assert llm.last_stats.stop_reason == "eog"
        text = llm.generate("Some numbers:", grammar=Grammar.from_string(numbers), temperature=1.0, seed=seed)
        assert re.fullmatch(r"[1-9][0-9]?(, [1-9][0-9]?){1,3}", text), text
        text = llm.generate("Two colors:", grammar=Grammar.from_lark(lark), temperature=1.0, seed=seed)
        assert re.fullmatch(r"(red|green|blue) (red|green|blue)", text) and llm.last_stats.stop_reason == "eog", text


def test_stream_is_constrained_too(smollm):
    pieces = list(smollm.stream("Answer:", grammar='root ::= "yes" | "no"', temperature=1.0, seed=3))
    assert "".join(pieces) in ("yes", "no") and smollm.last_stats.stop_reason == "eog"


def test_invalid_grammars_raise_grammar_error(smollm):
    assert issubclass(GrammarError, LlambaError)
    bad = [
        lambda: Grammar.from_json_schema({"type": "bogus"}),
        lambda: Grammar.from_json_schema("{not json"),
        lambda: Grammar.from_json_schema({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
        lambda: Grammar.from_string('root ::= "yes'),
        lambda: Grammar.from_string("root ::= undefined-rule"),
        lambda: Grammar.from_lark("start: missing"),
        lambda: smollm.generate("x", grammar="root ::= ("),
        lambda: smollm.generate("x", grammar={"type": "object"}),
        lambda: constraint_from_response_format({"type": "xml"}, smollm.tokenizer),
        lambda: constraint_from_response_format({"type": "json_schema"}, smollm.tokenizer),
    ]
    for make in bad:
        with pytest.raises(GrammarError):
            make()
