"""The GGML tensor types: id, name, block size and bytes per block (ggml-common.h)."""

from dataclasses import dataclass
from enum import IntEnum


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ4_NL = 20
    BF16 = 30


@dataclass(frozen=True)
class TypeInfo:
    type: GGMLType
    block_size: int  # elements per block
    type_size: int  # bytes per block

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


QK_K = 256  # super-block size of the K-quants

TYPES = {
    t.type: t
    for t in [
        TypeInfo(GGMLType.F32, 1, 4),
        TypeInfo(GGMLType.F16, 1, 2),
        TypeInfo(GGMLType.BF16, 1, 2),
        TypeInfo(GGMLType.Q4_0, 32, 18),
        TypeInfo(GGMLType.Q4_1, 32, 20),
        TypeInfo(GGMLType.Q5_0, 32, 22),
        TypeInfo(GGMLType.Q5_1, 32, 24),
        TypeInfo(GGMLType.Q8_0, 32, 34),
        TypeInfo(GGMLType.Q2_K, QK_K, 84),
        TypeInfo(GGMLType.Q3_K, QK_K, 110),
        TypeInfo(GGMLType.Q4_K, QK_K, 144),
        TypeInfo(GGMLType.Q5_K, QK_K, 176),
        TypeInfo(GGMLType.Q6_K, QK_K, 210),
        TypeInfo(GGMLType.Q8_K, QK_K, 292),
        TypeInfo(GGMLType.IQ4_NL, 32, 18),
    ]
}


class QuantTypeError(ValueError):
    """An unknown GGML type, or a row length that does not fit the type's block size."""


def type_info(t) -> TypeInfo:
    """Look up a type by id, GGMLType or name ('q4_k', 'Q4_K')."""
    try:
        if isinstance(t, str):
            return TYPES[GGMLType[t.upper()]]
        return TYPES[GGMLType(int(t))]
    except (KeyError, ValueError):
        raise QuantTypeError(f"unknown GGML type {t!r}; known: {', '.join(x.name for x in TYPES)}") from None


def row_bytes(t, n_cols: int) -> int:
    """Bytes of one row of n_cols elements; raises if n_cols is not a multiple of the block size."""
    info = type_info(t)
    if n_cols % info.block_size:
        raise QuantTypeError(f"row of {n_cols} elements is not a multiple of the {info.name} "
                             f"block size {info.block_size}")
    return n_cols // info.block_size * info.type_size
