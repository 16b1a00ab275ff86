"""Memory-mapped GGUF reading with validation of every count, length and offset.

Opening a file parses the header, metadata and tensor infos; tensor data stays in the page cache
(each tensor is a zero-copy numpy view over the map). Every problem raises GGUFError naming the file.
"""

import mmap
import os
from dataclasses import dataclass

import numpy as np

from quant import GGMLType, type_info
from quant.types import QuantTypeError

from .errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# value type id -> (numpy dtype) for fixed-size scalars
_SCALARS = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype("<u1"),
    10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8"),
}
_BOOL, _STRING, _ARRAY = 7, 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: GGMLType
    shape: tuple  # numpy order, outermost first: (n_rows, n_cols) for a matrix
    offset: int  # absolute offset of the data in the file
    nbytes: int
    raw: np.ndarray  # uint8 view (*shape[:-1], row_bytes) over the memory map

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def array(self) -> np.ndarray:
        """The data as a float array view for F32/F16 (zero copy); other types need quant.dequantize."""
        if self.qtype == GGMLType.F32:
            return self.raw.view(np.float32).reshape(self.shape)
        if self.qtype == GGMLType.F16:
            return self.raw.view(np.float16).reshape(self.shape)
        raise GGUFError(f"tensor {self.name!r} is {self.qtype.name}, not a float array")


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str):
        raise GGUFError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > self.size:
            self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, file has {self.size}")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def scalar(self, dtype: np.dtype, what: str):
        return np.frombuffer(self.take(dtype.itemsize, what), dtype)[0].item()

    def u32(self, what: str) -> int:
        return self.scalar(_SCALARS[4], what)

    def u64(self, what: str) -> int:
        return self.scalar(_SCALARS[10], what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype], what)
            return bool(v) if vtype == _BOOL else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth > 2:
                self.fail(f"{what}: arrays nested too deeply")
            etype = self.u32(f"element type of {what}")
            n = self.u64(f"length of {what}")
            if etype in _SCALARS:
                dtype = _SCALARS[etype]
                if n > self.size:  # cheap guard before multiplying
                    self.fail(f"truncated file: {what} claims {n} elements")
                arr = np.frombuffer(self.take(n * dtype.itemsize, what), dtype).copy()
                return arr.astype(bool) if etype == _BOOL else arr
            if etype not in (_STRING, _ARRAY):
                self.fail(f"{what}: unknown array element type {etype}")
            # each string/array element takes at least 8 bytes: reject absurd counts up front
            if n * 8 > self.size - self.pos:
                self.fail(f"truncated file: {what} claims {n} elements, more than the file can hold")
            return [self.value(etype, what, depth + 1) for _ in range(n)]
        self.fail(f"{what}: unknown metadata value type {vtype}")


class GGUFFile:
    """An open GGUF file. `metadata` maps keys to Python values (numeric arrays as numpy arrays);
    `tensors` maps names to TensorInfo with zero-copy views. Use as a context manager or call close()."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise GGUFError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file") from None
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror})") from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{self.path}: not a GGUF file (only {size} bytes)")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self):
        cur = _Cursor(self._map, self.path)
        magic = bytes(cur.take(4, "magic"))
        if magic != GGUF_MAGIC:
            cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            cur.fail(f"unsupported GGUF version {self.version} (supported: {SUPPORTED_VERSIONS})")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # every KV needs >= 13 bytes and every tensor info >= 28: reject impossible counts early
        if n_kv * 13 + n_tensors * 28 > cur.size:
            cur.fail(f"truncated file: header claims {n_kv} metadata keys and {n_tensors} tensors")

        self.metadata = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"value type of {key!r}")
            if key in self.metadata:
                cur.fail(f"duplicate metadata key {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(self.alignment, int) or self.alignment <= 0 or self.alignment & (self.alignment - 1):
            cur.fail(f"general.alignment must be a power of two, got {self.alignment!r}")

        infos = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            n_dims = cur.u32(f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            dims = [cur.u64(f"dimension of tensor {name!r}") for _ in range(n_dims)]
            type_id = cur.u32(f"type of tensor {name!r}")
            offset = cur.u64(f"offset of tensor {name!r}")
            infos.append((name, dims, type_id, offset))

        data_start = -(-cur.pos // self.alignment) * self.alignment
        self.data_offset = data_start
        self.tensors = {}
        for name, dims, type_id, offset in infos:
            if name in self.tensors:
                cur.fail(f"duplicate tensor name {name!r}")
            self.tensors[name] = self._tensor(cur, name, dims, type_id, offset, data_start)

    def _tensor(self, cur, name, dims, type_id, offset, data_start) -> TensorInfo:
        try:
            info = type_info(type_id)
        except QuantTypeError:
            cur.fail(f"tensor {name!r} has unknown or unsupported GGML type id {type_id}")
        if any(d == 0 for d in dims) or any(d > 2**40 for d in dims):
            cur.fail(f"tensor {name!r} has an invalid shape {dims}")
        n_elem = 1
        for d in dims:
            n_elem *= d
        if n_elem > 2**42:
            cur.fail(f"tensor {name!r} shape {dims} is too large")
        n_cols = dims[0]
        if n_cols % info.block_size:
            cur.fail(f"tensor {name!r} row length {n_cols} is not a multiple of the "
                     f"{info.name} block size {info.block_size}")
        if offset % self.alignment:
            cur.fail(f"tensor {name!r} data offset {offset} is not aligned to {self.alignment}")
        nbytes = n_elem // info.block_size * info.type_size
        start = data_start + offset
        if start + nbytes > cur.size:
            cur.fail(f"tensor {name!r} data ({nbytes} bytes at offset {start}) runs past the end of "
                     f"the file ({cur.size} bytes): truncated file?")
        shape = tuple(reversed(dims))
        row = n_cols // info.block_size * info.type_size
        raw = np.frombuffer(self._map, np.uint8, count=nbytes, offset=start).reshape(*shape[:-1], row)
        return TensorInfo(name, info.type, shape, start, nbytes, raw)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: metadata has no general.architecture")
        return arch

    def close(self):
        # views over the map keep it alive; mmap.close would fail with exported buffers, so drop refs
        self.tensors = {}
        f, self._file = getattr(self, "_file", None), None
        if f is not None:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_gguf(path) -> GGUFFile:
    return GGUFFile(path)
