"""Structured output: a grammar masks the logits before sampling, so every sampled text is in its language.

Built on llguidance, the engine llama.cpp uses. A `Grammar` is made from a JSON schema, "any JSON object", a Lark
grammar or a GBNF grammar (llama.cpp's format) and is checked when made; a `Constraint` follows one generation
through it: `mask(logits)` puts every token the grammar forbids next at -inf, `advance(token)` consumes the
sampled token, and `done` says the text is complete (nothing but an end-of-generation token may follow), which
is where generation stops. The Sampler applies the mask before its chain; generate() advances and stops.

llguidance sees each token id as the exact bytes it stands for (Tokenizer.token_bytes: SentencePiece's U+2581 as a
space, <0xAB> byte tokens as their byte, GPT-2's byte-level alphabet undone), markup tokens (control tokens and
tag-shaped user-defined ones, which text output drops) as special, so no grammar matches them unless it names
them, and the end-of-generation tokens as its EOS: they are allowed exactly when the text so far is complete.
A SentencePiece model that adds a space prefix drops a leading space of the first generated token from its text
(Tokenizer.decode) while the grammar saw it, so only a grammar that allows a leading space can see text differ.

JSON whitespace is bounded as llama.cpp's json-schema-to-grammar bounds it (a space, or one or two newlines and up
to 20 spaces or tabs), so a sampled run cannot spin in whitespace forever; a schema's own "x-guidance"
options override this (see llguidance's docs/json_schema.md). A text cut short by max_tokens or a stop string
is not complete.
"""

import json
import weakref

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import gbnf_to_lark
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from .errors import GrammarError

_JSON_DEFAULTS = {"whitespace_pattern": r"(?: |\n{1,2}[ \t]{0,20})"}
_SENTINEL = "\x01"  # a byte no SentencePiece piece merges with: encoded before a text, then removed


class Grammar:
    """A checked grammar in llguidance's form (`text`), reusable across generations: make one with
    `from_json_schema`, `json_object`, `from_lark` or `from_string` (GBNF), as llama-cpp-python's LlamaGrammar.
    Raises GrammarError with the parser's message when the grammar is invalid."""

    def __init__(self, text: str, what: str = "grammar"):
        error = llguidance.LLMatcher.validate_grammar(text)
        if error:
            raise GrammarError(f"invalid {what}: {error}")
        self.text = text

    @classmethod
    def from_json_schema(cls, schema: dict | str) -> "Grammar":
        """Text that parses as JSON and validates against `schema` (a dict, or its JSON text)."""
        try:
            text = schema if isinstance(schema, str) else json.dumps(schema)
            return cls(llguidance.LLMatcher.grammar_from_json_schema(text, defaults=_JSON_DEFAULTS), "JSON schema")
        except (TypeError, ValueError) as e:
            raise GrammarError(f"invalid JSON schema: {e}") from None

    @classmethod
    def json_object(cls) -> "Grammar":
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls.from_json_schema({"type": "object"})

    @classmethod
    def from_lark(cls, text: str) -> "Grammar":
        """A Lark grammar in llguidance's dialect (start rule `start`; regexes, %json, special tokens as <|...|>)."""
        return cls(llguidance.LLMatcher.grammar_from_lark(text), "Lark grammar")

    @classmethod
    def from_string(cls, gbnf: str) -> "Grammar":
        """A GBNF grammar (llama.cpp's format, start rule `root`), converted to Lark by llguidance."""
        try:
            lark = gbnf_to_lark(gbnf)
        except Exception as e:  # GbnfToLarkError, or a plain Exception for an undefined rule
            raise GrammarError(f"invalid GBNF grammar: {e}") from None
        return cls(llguidance.LLMatcher.grammar_from_lark(lark), "GBNF grammar")

    def constraint(self, tokenizer) -> "Constraint":
        """A fresh Constraint following this grammar with `tokenizer`'s vocabulary (one per generation)."""
        return Constraint(self, tokenizer)


class Constraint:
    """One generation's place in a Grammar: mask the logits, advance by the sampled token, stop when `done`."""

    def __init__(self, grammar: Grammar, tokenizer):
        vocab = ll_tokenizer(tokenizer)
        self._matcher = llguidance.LLMatcher(vocab, grammar.text, log_level=0)
        self._bits = allocate_token_bitmask(1, vocab.vocab_size)  # (1, ceil(n_vocab / 32)) int32
        self._check()

    def _check(self):
        if self._matcher.is_error():
            raise GrammarError(f"invalid grammar for this vocabulary: {self._matcher.get_error()}")

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of `logits` (n_vocab,) with every token the grammar forbids next at -inf."""
        fill_next_token_bitmask(self._matcher, self._bits)
        self._check()
        # bit i of little-endian word j allows token 32 j + i
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:len(logits)].view(bool)  # (n_vocab,)
        if allowed.size < len(logits):
            raise GrammarError(f"the model scores {len(logits)} tokens but its tokenizer has {allowed.size} at most")
        return np.where(allowed, logits, np.float32(-np.inf))

    def advance(self, token: int) -> None:
        """Consume the sampled `token`; GrammarError if the grammar forbids it (it was not sampled from a mask)."""
        if not self._matcher.consume_token(int(token)):
            raise GrammarError(f"token {token} leaves the grammar: {self._matcher.get_error().splitlines()[0]}")

    @property
    def done(self) -> bool:
        """The text is complete: no token but an end-of-generation one may follow."""
        return self._matcher.is_stopped()


def constraint_from_response_format(response_format: dict | None, tokenizer) -> Constraint | None:
    """A Constraint for an OpenAI-style `response_format`, or None for None and {"type": "text"}.

    {"type": "json_object"}: any JSON object; {"type": "json_object", "schema": {...}} (llama-cpp-python's
    spelling) and {"type": "json_schema", "json_schema": {"schema": {...}, ...}} (OpenAI's): JSON valid under
    the schema (any JSON object when it has none). Anything else raises GrammarError.
    """
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
    elif kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")
    else:
        raise GrammarError(f"unsupported response_format {response_format!r}: expected type 'text', 'json_object' "
                           "or 'json_schema' (with a 'json_schema': {'schema': ...} entry)")
    grammar = Grammar.json_object() if schema is None else Grammar.from_json_schema(schema)
    return grammar.constraint(tokenizer)


def as_constraint(grammar: Grammar | str, tokenizer) -> Constraint:
    """The `grammar=` argument of LLM's calls (a Grammar or a GBNF string) as a fresh Constraint."""
    if isinstance(grammar, str):
        grammar = Grammar.from_string(grammar)
    if not isinstance(grammar, Grammar):
        raise GrammarError(f"grammar must be a runtime.grammar.Grammar or a GBNF string, got {type(grammar).__name__}")
    return grammar.constraint(tokenizer)


# ---------------------------------------------------------------- llamba's vocabulary as llguidance sees it


_LL_TOKENIZERS = weakref.WeakKeyDictionary()  # Tokenizer -> llguidance.LLTokenizer


def ll_tokenizer(tokenizer) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for `tokenizer`, built on first use (about 0.5 s for 150k tokens) and kept with it."""
    ll = _LL_TOKENIZERS.get(tokenizer)
    if ll is None:
        eog = sorted(tokenizer.eog_ids) or None
        ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)), eos_token=eog)
        _LL_TOKENIZERS[tokenizer] = ll
    return ll


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads: each id's bytes, the markup ids, EOS/BOS, and text -> ids. It holds
    the tokenizer weakly: the cache's entry (whose LLTokenizer holds this) must not keep its own key alive."""

    def __init__(self, tokenizer):
        ids = range(tokenizer.n_vocab)
        self.tokens = [tokenizer.token_bytes(i) for i in ids]
        self.special_token_ids = [i for i in ids if tokenizer.is_markup(i)]
        self.eos_token_id, self.bos_token_id = tokenizer.eos_id, tokenizer.bos_id
        self._tokenizer = weakref.ref(tokenizer)
        # a SentencePiece space prefix would add a space: encode behind a sentinel byte and drop the sentinel's ids
        # (as llguidance's llama.cpp bridge does)
        self._sentinel = _SENTINEL if tokenizer.add_space_prefix else ""
        self._n_sentinel = len(tokenizer.encode(self._sentinel, add_bos=False, special=False))

    def __call__(self, text: str) -> list:
        """Ids standing for exactly the bytes of `text` (bytes raise: TokenizerWrapper's probe then passes str)."""
        return self._tokenizer().encode(self._sentinel + text, add_bos=False, special=False)[self._n_sentinel:]
