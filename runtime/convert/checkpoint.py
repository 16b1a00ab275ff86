"""Hugging Face checkpoint weights, read one tensor at a time from memory maps.

`Checkpoint(model_dir)` finds `model.safetensors`, sharded safetensors (`model.safetensors.index.json`)
or `pytorch_model*.bin` and gives each tensor's shape without reading it, and its data as float32
on demand. Peak memory is one tensor (plus its float32 copy), never the model: a tensor's mapped pages are
released once it is copied. Safetensors headers are parsed and validated here (bf16 included, which numpy
lacks); every problem raises ConvertError.
"""

import math
import mmap
import os
import reprlib
from pathlib import Path

import numpy as np

from ..errors import ConvertError
from .jsonfile import parse_object, read_object

MAX_HEADER_BYTES = 100 * 2**20  # the safetensors reference implementation's limit

_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("u1"),
}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact: bf16 is the top half of an f32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class _SafetensorsFile:
    """One .safetensors file: validated header, tensors as views over a read-only memory map."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    self._fail(f"only {size} bytes, too short for a header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ConvertError(f"{path}: cannot read ({e})") from None
        n = int.from_bytes(self._map[:8], "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            self._fail(f"header length {n} is impossible for a file of {size} bytes")
        header = parse_object(bytes(self._map[8:8 + n]), f"{path}: corrupt safetensors file: header")
        header.pop("__metadata__", None)
        self.data_start, data_size = 8 + n, size - 8 - n
        self.entries = {name: self._entry(name, e, data_size) for name, e in header.items()}

    def _fail(self, what: str):
        raise ConvertError(f"{self.path}: corrupt safetensors file: {what}")

    def _entry(self, name: str, e, data_size: int):
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            self._fail(f"tensor {name!r} needs dtype, shape and data_offsets")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            self._fail(f"tensor {name!r} has unsupported dtype {reprlib.repr(dtype)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63
                                                  for d in shape):
            self._fail(f"tensor {name!r} has an invalid shape {reprlib.repr(shape)}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size):
            self._fail(f"tensor {name!r} data offsets {reprlib.repr(offsets)} fall outside the {data_size} data bytes")
        nbytes = math.prod(shape) * _ST_DTYPES[dtype].itemsize  # exact: numpy's int64 product could wrap to 0
        if offsets[1] - offsets[0] != nbytes:
            self._fail(f"tensor {name!r} of shape {shape} {dtype} needs {nbytes} bytes, offsets give "
                       f"{offsets[1] - offsets[0]}")
        return dtype, tuple(shape), self.data_start + offsets[0]

    def shape(self, name: str) -> tuple:
        return self.entries[name][1]

    def load(self, name: str) -> np.ndarray:
        dtype, shape, start = self.entries[name]
        raw = np.frombuffer(self._map, _ST_DTYPES[dtype], count=int(np.prod(shape, dtype=np.int64)), offset=start)
        data = bf16_to_f32(raw) if dtype == "BF16" else raw.astype(np.float32)  # a copy either way
        # drop the mapped pages just read, or they stay resident and peak RSS grows to the whole file
        page = start - start % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, page, start + raw.nbytes - page)
        return data.reshape(shape)


class _TorchFile:
    """One pytorch_model*.bin, opened with torch.load(mmap=True, weights_only=True)."""

    def __init__(self, path: Path):
        try:
            import torch
        except ImportError:
            raise ConvertError(f"{path} is a PyTorch checkpoint: reading it needs torch "
                               "(pip install torch --index-url https://download.pytorch.org/whl/cpu), "
                               "or convert a directory with .safetensors weights") from None
        self.path = path
        try:
            self.state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises many types for a bad file
            raise ConvertError(f"{path}: cannot read PyTorch checkpoint ({e})") from None
        if not isinstance(self.state, dict):
            raise ConvertError(f"{path}: expected a state dict of tensors, found {type(self.state).__name__}")
        self.entries = {k: v for k, v in self.state.items() if hasattr(v, "shape")}

    def shape(self, name: str) -> tuple:
        return tuple(self.entries[name].shape)

    def load(self, name: str) -> np.ndarray:
        import torch
        return self.entries[name].to(torch.float32).numpy()


def _shard_files(model_dir: Path, index_name: str) -> list:
    weight_map = read_object(model_dir / index_name).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ConvertError(f"{model_dir / index_name}: not a valid shard index ('weight_map' must map tensor names "
                           "to file names)")
    files = sorted(set(weight_map.values()))
    outside = [f for f in files if Path(f).name != f or f in ("", ".", "..")]
    if outside:
        raise ConvertError(f"{model_dir / index_name}: shard {outside[0]!r} is not a file name in {model_dir}")
    missing = [f for f in files if not (model_dir / f).is_file()]
    if missing:
        raise ConvertError(f"{model_dir}: shard(s) listed in {index_name} are missing: {', '.join(missing)}")
    return [model_dir / f for f in files]


class Checkpoint:
    """All weight files of a model directory: `names`, `shape(name)`, `load(name) -> float32`."""

    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        if (model_dir / "model.safetensors.index.json").is_file():
            files = [_SafetensorsFile(p) for p in _shard_files(model_dir, "model.safetensors.index.json")]
        elif (model_dir / "model.safetensors").is_file():
            files = [_SafetensorsFile(model_dir / "model.safetensors")]
        elif (model_dir / "pytorch_model.bin.index.json").is_file():
            files = [_TorchFile(p) for p in _shard_files(model_dir, "pytorch_model.bin.index.json")]
        elif (model_dir / "pytorch_model.bin").is_file():
            files = [_TorchFile(model_dir / "pytorch_model.bin")]
        else:
            raise ConvertError(f"{model_dir}: no weights found (expected model.safetensors, "
                               "model.safetensors.index.json or pytorch_model.bin)")
        self._owner = {}
        for f in files:
            for name in f.entries:
                if name in self._owner:
                    raise ConvertError(f"tensor {name!r} appears in both {self._owner[name].path} and {f.path}")
                self._owner[name] = f
        self.files = [f.path for f in files]

    @property
    def names(self) -> list:
        return list(self._owner)

    def shape(self, name: str) -> tuple:
        return self._owner[name].shape(name)

    def load(self, name: str) -> np.ndarray:
        return self._owner[name].load(name)
