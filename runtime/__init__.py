"""llamba: CPU-first quantized LLM inference from GGUF files.

    from runtime import LLM
    llm = LLM()  # the default model (see runtime.registry), or LLM("path/to/model.gguf")
    text = llm.generate("Once upon a time", max_tokens=32, temperature=0)

The API (LLM, load, SamplingParams, Grammar) is imported on first use, so `import runtime.gguf` stays light.
"""

from .errors import (
    ContextOverflowError,
    FetchError,
    GGUFError,
    GPUError,
    GrammarError,
    LlambaError,
    NumericsError,
    TokenizerError,
    UnsupportedError,
)

__all__ = [
    "LLM", "Session", "SessionState", "load", "SamplingParams", "GenerationStats", "ChatTemplateError", "Grammar",
    "LlambaError", "GGUFError", "UnsupportedError", "ContextOverflowError", "TokenizerError", "FetchError",
    "NumericsError", "GrammarError", "GPUError",
]

_LAZY = {"LLM": "llm", "Session": "llm", "SessionState": "state", "SamplingParams": "sampling",
         "GenerationStats": "generate", "ChatTemplateError": "chat", "Grammar": "grammar"}


def load(model=None, **kwargs):
    """LLM(model, **kwargs): a GGUF path, a known model name, or None for the default model."""
    from .llm import LLM

    return LLM(model, **kwargs)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
