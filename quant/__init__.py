"""GGML block formats: type registry, quantize/dequantize, and Numba kernels over quantized blocks.

Knows nothing of transformers: only blocks, rows and matrices.
"""

from . import jit  # noqa: F401  set up numba (on import) before any kernel is decorated
from .dequant import dequantize
from .matrix import QMatrix
from .quantize import quantize
from .types import QK_K, TYPES, GGMLType, QuantTypeError, TypeInfo, row_bytes, type_info

__all__ = ["GGMLType", "TypeInfo", "TYPES", "QK_K", "QuantTypeError", "type_info", "row_bytes",
           "dequantize", "quantize", "QMatrix"]
