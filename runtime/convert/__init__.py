"""The converter: Hugging Face checkpoints to GGUF, and GGUF to GGUF requantization.

  checkpoint.py  safetensors / PyTorch .bin tensors read one at a time from memory maps
  vocab.py       tokenizer files -> GGUF tokenizer keys
  plan.py        llama.cpp's per-tensor type rules for the quant mixes (Q4_K_M, ...)
  writer.py      streams tensors into a temporary GGUF file, renamed when complete
  hf_to_gguf.py  the HF -> GGUF engine (`llamba convert`, tools/convert.py)
  requantize.py  GGUF -> GGUF (`llamba quantize`, tools/quantize.py)
What a checkpoint of each architecture looks like lives with the architecture (runtime/archs/). The engine never
imports this package.
"""

from ..errors import ConvertError
from .hf_to_gguf import convert, find_architecture
from .requantize import quantize_gguf
from .writer import WriteResult

__all__ = ["ConvertError", "WriteResult", "convert", "find_architecture", "quantize_gguf"]
