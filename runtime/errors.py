"""The exceptions llamba raises. Every user-facing failure is a LlambaError with a clear message."""


class LlambaError(Exception):
    """Base class of every error llamba raises on bad input or state."""


class GGUFError(LlambaError):
    """A GGUF file is missing, corrupt, truncated or uses something we do not support."""


class UnsupportedError(LlambaError):
    """A model uses an architecture, tensor type or feature llamba does not implement."""


class ContextOverflowError(LlambaError):
    """A prompt (plus generated tokens) does not fit in the context window."""


class TokenizerError(LlambaError):
    """Tokenizer metadata is missing or inconsistent."""


class FetchError(LlambaError):
    """A known model could not be downloaded or failed its checksum."""


class ConvertError(LlambaError):
    """A model directory, checkpoint or conversion/quantization request is missing, corrupt or inconsistent."""


class NumericsError(LlambaError):
    """A model produced NaN or infinite values (damaged weights, or a wrong conversion)."""


class GrammarError(LlambaError):
    """A JSON schema, grammar or response_format is invalid, or a constrained generation left its grammar."""


class GPUError(LlambaError):
    """GPU offload was asked for (n_gpu_layers) and cannot run: numba-cuda, a driver or a GPU is missing."""
