"""Supported architectures: `ARCHITECTURES` maps a GGUF `general.architecture` to its module.

Each module has `Config` (a DecoderConfig dataclass with `from_metadata(md)`), `LAYER_TENSORS`
(per-layer tensors it needs beyond the common ones) and the Hugging Face <-> GGUF mapping."""

from ..errors import UnsupportedError
from . import bloom, falcon, gemma3, gpt2, gptneox, llama, mpt, opt, phi2, qwen2

ARCHITECTURES = {"llama": llama, "qwen2": qwen2, "gemma3": gemma3, "gptneox": gptneox, "gpt2": gpt2,
                 "falcon": falcon, "phi2": phi2, "opt": opt,
                 "mpt": mpt, "bloom": bloom}


def get(arch: str):
    """The module of architecture `arch`; UnsupportedError names it and lists the supported ones."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnsupportedError(f"architecture {arch!r} is not supported (supported: "
                               f"{', '.join(sorted(ARCHITECTURES))})") from None
