"""Memory-mapped GGUF (v2, v3) reading with validation of every count, length and offset.

Opening a file parses the header, metadata and tensor infos and never reads tensor data: each tensor
is a zero-copy numpy view over the map (raw blocks for quantized types). Every problem in the file
raises GGUFError naming the file and the problem; no count from the file is trusted before it has
been checked against the bytes that are really there, so a corrupt file cannot cause a huge
allocation or a long loop.

Close semantics: `close()` unmaps the file and closes its descriptor. Views taken before (a
`TensorInfo.raw`, `.array()`) stay valid: while any exists the map stays alive, and it is released
when the last view is dropped. Metadata values are copies and never depend on the map.
"""

import mmap
import os
import struct
from array import array
from dataclasses import dataclass

import numpy as np

from quant.types import GGMLType, QuantTypeError, type_info

from .errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts; v2 and v3 share one little-endian layout
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
INT64_MAX = 2**63 - 1  # ggml stores dimensions and element counts as int64

# metadata value type id -> struct/numpy format of fixed-size scalars
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
_STRUCTS = {t: struct.Struct("<" + f) for t, f in _FORMATS.items()}
_DTYPES = {t: np.dtype("<" + f) for t, f in _FORMATS.items()}
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
_U32, _U64 = _STRUCTS[4], _STRUCTS[10]


REQUIRED = object()  # meta's default for a key that must be present


def meta(md: dict, key: str, kind: type | None = None, default=REQUIRED, error: type = GGUFError):
    """Typed metadata access: md[key] checked to be a `kind` (int: not a bool; float: ints widened), `default` when
    the key is absent. A missing required key or a value of another kind raises `error` (GGUFError for a
    model's hyperparameters, TokenizerError for the tokenizer's keys)."""
    if key not in md:
        if default is REQUIRED:
            raise error(f"GGUF metadata has no {key!r}")
        return default
    value = md[key]
    if kind in (int, float) and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return kind(value)
    if kind is None or (kind is not int and isinstance(value, kind)):
        return value
    raise error(f"GGUF metadata {key!r} = {value!r:.40} should be {kind.__name__}, got {type(value).__name__}")


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
    """Bounds-checked little-endian reads from the map; every failure is a GGUFError naming the file."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str):
        raise GGUFError(f"{self.path}: {what}")

    def need(self, n: int, what: str):
        if self.pos + n > self.size:
            self.fail(f"truncated file: {what} needs {n} bytes at offset {self.pos}, the file has {self.size}")

    def unpack(self, st: struct.Struct, what: str):
        self.need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u32(self, what: str) -> int:
        return self.unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self.unpack(_U64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not valid UTF-8 ({e.reason} at byte {e.start})")

    def value(self, vtype: int, what: str):
        """One metadata value: int, float, bool, str, numpy array (numeric arrays) or list[str]."""
        if vtype in _STRUCTS:
            v = self.unpack(_STRUCTS[vtype], what)
            if vtype == _BOOL:
                if v > 1:
                    self.fail(f"{what}: bool value {v} is neither 0 nor 1")
                return bool(v)
            return v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what)
        self.fail(f"{what}: unknown metadata value type {vtype}")

    def array(self, what: str):
        etype = self.u32(f"element type of {what}")
        n = self.u64(f"length of {what}")
        if etype in _DTYPES:
            dtype = _DTYPES[etype]
            if n * dtype.itemsize > self.size - self.pos:
                self.fail(f"truncated file: {what} claims {n} elements of {dtype.itemsize} bytes at offset "
                          f"{self.pos}, the file has {self.size} bytes")
            arr = np.frombuffer(self.buf, dtype, count=n, offset=self.pos).copy()
            self.pos += arr.nbytes
            if etype == _BOOL:
                if arr.size and arr.max() > 1:
                    self.fail(f"{what}: bool array holds values other than 0 and 1")
                return arr.astype(bool)
            return arr
        if etype == _STRING:
            return self.string_array(n, what)
        if etype == _ARRAY:
            self.fail(f"{what}: arrays of arrays are not supported")
        self.fail(f"{what}: unknown array element type {etype}")

    def string_array(self, n: int, what: str) -> list:
        """n length-prefixed UTF-8 strings. One Python pass walks the length prefixes (the only per-element
        work: each one depends on the previous); numpy then joins the bodies for a single decode."""
        if n * 8 > self.size - self.pos:  # each element holds at least its 8-byte length
            self.fail(f"truncated file: {what} claims {n} strings at offset {self.pos}, the file has {self.size} bytes")
        first, buf, unpack = self.pos, self.buf, _U64.unpack_from
        starts = array("q")  # (n,) file offset of each body; grows only as far as the file really goes
        add, pos = starts.append, first
        try:
            for _ in range(n):  # hot loop: the only per-string Python work
                (length,) = unpack(buf, pos)
                pos += 8
                add(pos)
                pos += length
        except (struct.error, OverflowError):  # this length prefix, or the previous body, lies past the end
            bad = len(starts) - (pos > self.size)
            self.fail(f"truncated file: {what}[{bad}] runs past the end of the file ({self.size} bytes)")
        if pos > self.size:
            self.fail(f"truncated file: {what}[{n - 1}] runs past the end of the file ({self.size} bytes)")
        self.pos = pos
        return _decode_strings(buf, first, pos, np.frombuffer(starts, np.int64), lambda msg: self.fail(f"{what}{msg}"))


def _decode_strings(buf, first: int, end: int, starts: np.ndarray, fail) -> list:
    """The strings whose bodies start at `starts` (n,) in buf[first:end], each after its 8-byte length.

    Each length prefix shrinks to one ASCII separator byte that no body contains; the joined bytes are
    decoded and split at once. An ASCII byte never sits inside a UTF-8 sequence, so the joined text is
    valid exactly when every string is. Should the bodies contain all 128 ASCII bytes, each string is
    decoded on its own."""
    n = len(starts)
    if n == 0:
        return []
    region = np.frombuffer(buf, np.uint8, count=end - first, offset=first)  # (n_bytes,)
    rel = starts - first  # (n,) body start in region
    delta = np.zeros(len(region) + 1, np.int8)  # drop the first 7 bytes of every prefix
    delta[rel - 8] = 1
    delta[rel - 1] -= 1
    joined = region[np.cumsum(delta[:-1], dtype=np.int8) == 0]  # (n + n_body_bytes,) prefix byte, body, ...
    seps = rel - 1 - 7 * np.arange(1, n + 1)  # (n,) position of each prefix byte in joined
    joined[seps] = 0xFF  # not ASCII: keep it out of the count
    free = np.flatnonzero(np.bincount(joined, minlength=256)[:128] == 0)
    if len(free) == 0:
        return _decode_each(joined.tobytes(), (seps + 1).tolist(), fail)
    joined[seps] = free[0]
    try:
        text = joined[1:].tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        bad = int(np.searchsorted(seps, e.start + 1, side="right")) - 1  # e.start counts from joined[1]
        fail(f"[{bad}] is not valid UTF-8 ({e.reason})")
    return text.split(chr(free[0]))


def _decode_each(joined: bytes, body_starts: list, fail) -> list:
    """The slow path: decode joined[body_starts[i]:body_starts[i + 1] - 1] one string at a time."""
    out = []
    for i, (a, b) in enumerate(zip(body_starts, body_starts[1:] + [len(joined) + 1], strict=True)):
        try:
            out.append(joined[a:b - 1].decode("utf-8"))
        except UnicodeDecodeError as e:
            fail(f"[{i}] is not valid UTF-8 ({e.reason})")
    return out


def _check_disjoint(cur: _Cursor, tensors) -> None:
    """Tensors' data must not overlap (one tensor's bytes read as another's is a corrupt table)."""
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            cur.fail(f"tensors {a!r} and {b!r} overlap in the file (corrupt tensor table)")


class GGUFFile:
    """An open GGUF file. `metadata` maps keys to Python values (ints, floats, bools, str; numeric arrays
    as numpy arrays, string arrays as list[str]); `tensors` maps names, in file order, to TensorInfo with
    zero-copy views. Use as a context manager or call close() (see the module docstring)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 24:
                    raise GGUFError(f"{self.path}: not a GGUF file (only {size} bytes)")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # holds its own descriptor
        except FileNotFoundError:
            raise GGUFError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise GGUFError(f"{self.path}: is a directory, not a GGUF file") from None
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror or e})") from None
        try:
            self._parse(_Cursor(self._map, self.path))
        except BaseException:
            self.close()
            raise

    def release(self, view: np.ndarray) -> None:
        """Let the whole memory pages inside `view` (bytes of this file's map, e.g. a tensor's blocks that the runtime
        has copied, quant.interleave) leave this process's memory: madvise(MADV_DONTNEED). They stay in the OS's page
        cache and are mapped again if read. Nothing happens for other arrays or a closed file."""
        if self._map is None or not hasattr(self._map, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = np.frombuffer(self._map, np.uint8, count=1).ctypes.data
        start, end = view.ctypes.data - base, view.ctypes.data - base + view.nbytes
        if start < 0 or end > len(self._map):
            return
        start, end = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
        if start < end:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _parse(self, cur: _Cursor):
        magic = cur.buf[:4]
        if magic != GGUF_MAGIC:
            cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            endian = " (a big-endian file?)" if self.version & 0xFFFF == 0 else ""
            cur.fail(f"unsupported GGUF version {self.version}{endian}; supported: {SUPPORTED_VERSIONS}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # a metadata entry takes >= 13 bytes and a tensor info >= 32: reject impossible counts early
        if n_kv * 13 + n_tensors * 32 > cur.size - cur.pos:
            cur.fail(f"truncated file: the header claims {n_kv} metadata keys and {n_tensors} tensors, "
                     f"more than {cur.size} bytes can hold")

        self.metadata = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            vtype = cur.u32(f"value type of metadata {key!r}")
            if key in self.metadata:
                cur.fail(f"duplicate metadata key {key!r}")
            if key == "general.alignment" and vtype != _UINT32:
                cur.fail(f"general.alignment must be a uint32, got value type {vtype}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")

        self.alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if self.alignment == 0 or self.alignment & (self.alignment - 1):
            cur.fail(f"general.alignment must be a power of two, got {self.alignment}")

        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors = {}
        for name, dims, type_id, offset in infos:
            if name in self.tensors:
                cur.fail(f"duplicate tensor name {name!r}")
            self.tensors[name] = self._tensor(cur, name, dims, type_id, offset)
        _check_disjoint(cur, self.tensors.values())

    @staticmethod
    def _tensor_info(cur: _Cursor, i: int) -> tuple:
        name = cur.string(f"name of tensor #{i}")
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        dims = [cur.u64(f"dimensions of tensor {name!r}") for _ in range(n_dims)]  # ggml order, innermost first
        return name, dims, cur.u32(f"type of tensor {name!r}"), cur.u64(f"data offset of tensor {name!r}")

    def _tensor(self, cur: _Cursor, name: str, dims: list, type_id: int, offset: int) -> TensorInfo:
        try:
            info = type_info(type_id)
        except QuantTypeError:
            cur.fail(f"tensor {name!r} has unknown or unsupported GGML type id {type_id}")
        n_elem = 1
        for d in dims:
            n_elem *= d
        if n_elem == 0:
            cur.fail(f"tensor {name!r} has an empty shape {dims}")
        if n_elem > INT64_MAX:
            cur.fail(f"tensor {name!r} shape {dims} overflows a 64-bit element count")
        if dims[0] % info.block_size:
            cur.fail(f"tensor {name!r} row length {dims[0]} is not a multiple of the "
                     f"{info.name} block size {info.block_size}")
        if offset % self.alignment:
            cur.fail(f"tensor {name!r} data offset {offset} is not aligned to {self.alignment}")
        nbytes = n_elem // info.block_size * info.type_size
        start = self.data_offset + offset
        if start + nbytes > cur.size:
            cur.fail(f"tensor {name!r} data ({nbytes} bytes at offset {start}) runs past the end of the file "
                     f"({cur.size} bytes): truncated file?")
        shape = tuple(reversed(dims))  # numpy order
        row = dims[0] // info.block_size * info.type_size
        raw = np.frombuffer(cur.buf, np.uint8, count=nbytes, offset=start).reshape(*shape[:-1], row)
        return TensorInfo(name, info.type, shape, start, nbytes, raw)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: metadata has no general.architecture")
        return arch

    def close(self):
        """Unmap the file and close its descriptor now, unless views from it are still alive: then the map
        lives on until the last of them is dropped (unmapping under a live view would crash)."""
        self.tensors = {}
        m, self._map = getattr(self, "_map", None), None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
