"""The OpenAI request bodies the server accepts, as pydantic models: types and ranges checked before any work.

Fields follow OpenAI's API reference (with its ranges) plus llama.cpp's extras (top_k, min_p, repeat_penalty);
unknown fields are ignored, as OpenAI's clients send new ones before servers know them. `n` other than 1 and
`suffix` are refused. Each request turns into the keyword arguments of runtime/completions.py's calls
(`completion_kwargs`), the llama-cpp-python shapes the server exposes.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..completions import SAMPLING

MAX_STOPS = 16


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: dict | None = None
    n: int = 1

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n != 1:
            raise ValueError("only n=1 is supported (one choice per request)")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        if bias is None:
            return None
        out = {}
        for key, value in bias.items():
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias values must lie in [-100, 100], got {value}")
            out[int(key)] = value
        return out

    def sampling(self) -> dict:
        """The sampling keywords given (the call's own defaults stand for the others)."""
        return {k: getattr(self, k) for k in (*SAMPLING, "logit_bias") if getattr(self, k) is not None}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict:
        d = self.model_dump(exclude_none=True)
        if d["role"] == "developer":  # OpenAI's newer name for the system role
            d["role"] = "system"
        d.setdefault("content", None)
        return d


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    def completion_kwargs(self) -> dict:
        return dict(messages=[m.as_dict() for m in self.messages], stop=self.stop, stream=self.stream,
                    stream_options=self.stream_options,
                    max_tokens=self.max_completion_tokens or self.max_tokens, logprobs=self.logprobs,
                    top_logprobs=self.top_logprobs if self.logprobs else None, response_format=self.response_format,
                    tools=self.tools, tool_choice=self.tool_choice, **self.sampling())


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any):
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError("only one prompt per request is supported")
            prompt = prompt[0]
        if isinstance(prompt, list) and any(i < 0 for i in prompt):
            raise ValueError("token ids must be >= 0")
        return prompt

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix):
        if suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        return suffix

    def completion_kwargs(self) -> dict:
        return dict(prompt=self.prompt, stop=self.stop, stream=self.stream, stream_options=self.stream_options,
                    max_tokens=self.max_tokens or None,
                    logprobs=self.logprobs, echo=self.echo, **self.sampling())


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"  # base64: float32 little-endian (the openai client's default)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value


class TokenizeRequest(BaseModel):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    tokens: list[int]
