"""Streaming, all-or-nothing GGUF writing (shared by convert and quantize).

`write_gguf` lays out header, metadata and tensor infos from a plan, then produces and writes one
tensor at a time (peak memory: one tensor) into a temporary file `.NAME.PID.partial` next to the target,
renamed only when complete. A failure or Ctrl-C removes the temporary file, and the next write into the
directory removes those a killed process left behind; an existing target needs force=True.
"""

import os
import re
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

import quant
from quant import GGMLType, type_info

from ..errors import ConvertError

ALIGNMENT = 32
QUANTIZATION_VERSION = 2
_PARTIAL = re.compile(r"\..+\.(\d{1,9})\.partial")  # the temporary file of process (group 1)


@dataclass
class PlannedTensor:
    name: str  # GGUF name
    shape: tuple  # numpy order
    qtype: GGMLType
    produce: Callable  # () -> uint8 raw data (..., row_bytes) in qtype
    note: str | None = None  # why the type differs from the requested one

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        info = type_info(self.qtype)
        return self.n_elements // info.block_size * info.type_size


def encode(x: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """float32 (..., n_cols) -> raw GGML data uint8 (..., row_bytes)."""
    if qtype == GGMLType.F32:
        return np.ascontiguousarray(x, np.float32).view(np.uint8)
    if qtype == GGMLType.F16:
        return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8)
    return quant.quantize(np.ascontiguousarray(x, np.float32), qtype)


_ARRAY_TYPES = {np.dtype(k): v for k, v in [
    ("<u1", GGUFValueType.UINT8), ("<i1", GGUFValueType.INT8), ("<u2", GGUFValueType.UINT16),
    ("<i2", GGUFValueType.INT16), ("<u4", GGUFValueType.UINT32), ("<i4", GGUFValueType.INT32),
    ("<f4", GGUFValueType.FLOAT32), ("<u8", GGUFValueType.UINT64), ("<i8", GGUFValueType.INT64),
    ("<f8", GGUFValueType.FLOAT64), ("?", GGUFValueType.BOOL)]}


def typed(key: str, value) -> tuple:
    """(key, value, GGUFValueType, element type). Scalars get llama.cpp's usual types (ints uint32, int32 if
    negative; floats float32); numeric arrays keep their numpy dtype."""
    if isinstance(value, bool):
        return key, value, GGUFValueType.BOOL, None
    if isinstance(value, int):
        return key, value, GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32, None
    if isinstance(value, float):
        return key, value, GGUFValueType.FLOAT32, None
    if isinstance(value, str):
        return key, _utf8(key, [value])[0], GGUFValueType.STRING, None
    if isinstance(value, np.ndarray) and value.dtype in _ARRAY_TYPES:
        return key, value.tolist(), GGUFValueType.ARRAY, _ARRAY_TYPES[value.dtype]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return key, _utf8(key, value), GGUFValueType.ARRAY, GGUFValueType.STRING
    raise TypeError(f"metadata {key!r}: cannot store {type(value).__name__}")


def _utf8(key: str, texts: list) -> list:
    """texts checked to be encodable as UTF-8 (a JSON string may hold a lone surrogate, which is not)."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConvertError(f"metadata {key!r} holds text that is not valid UTF-8 ({e.object[e.start:e.end]!r}: "
                           f"{e.reason})") from None
    return texts


def check_target(path: Path, force: bool):
    if path.is_dir():
        raise ConvertError(f"{path} is a directory; give a file name for the output")
    if not path.parent.is_dir():
        raise ConvertError(f"output directory {path.parent} does not exist")
    if path.exists() and not force:
        raise ConvertError(f"{path} already exists (use --force to overwrite)")


class Progress:
    """One status line on stderr: tensors and bytes written, redrawn at most 10 times a second."""

    def __init__(self, n_tensors: int, n_bytes: int, enabled: bool):
        self.n, self.total, self.enabled = n_tensors, n_bytes, enabled
        self.i, self.done, self.last = 0, 0, 0.0

    def step(self, nbytes: int):
        self.i, self.done = self.i + 1, self.done + nbytes
        if self.enabled and (time.monotonic() - self.last > 0.1 or self.i == self.n):
            self.last = time.monotonic()
            frac = self.done / max(self.total, 1)
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r[{bar:<30}] {self.i}/{self.n} tensors  {self.done / 2**20:.1f}/"
                             f"{self.total / 2**20:.1f} MiB" + ("\n" if self.i == self.n else ""))
            sys.stderr.flush()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove_stale_partials(directory: Path):
    """Delete the temporary files in directory of writes whose process is gone (killed before it could clean up:
    SIGKILL, out of memory, power loss). A live process's file is kept, and so is a dead one's whose pid a new
    process has taken."""
    for p in directory.glob(".*.partial"):
        m = _PARTIAL.fullmatch(p.name)
        if m and not _alive(int(m.group(1))):
            with suppress(OSError):
                p.unlink()


def write_gguf(path, arch: str, metadata: list, tensors: list, *, force: bool = False, progress=None):
    """metadata: (key, value, GGUFValueType, element type) tuples; tensors: PlannedTensor in file order."""
    path = Path(path)
    check_target(path, force)
    remove_stale_partials(path.parent)
    tmp = path.parent / f".{path.name}.{os.getpid()}.partial"
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(len(tensors), sum(t.nbytes for t in tensors), show)
    writer = GGUFWriter(tmp, arch)
    try:
        for key, value, vtype, sub in metadata:
            writer.add_key_value(key, value, vtype, sub)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, GGMLQuantizationType(int(t.qtype)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            data = t.produce()
            if data.nbytes != t.nbytes:
                raise ConvertError(f"internal error: {t.name} produced {data.nbytes} bytes, planned {t.nbytes}")
            writer.write_tensor_data(data)
            bar.step(t.nbytes)
        writer.close()
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):  # the failure may be the file system's: closing and removing may fail too
            writer.close()
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # a directory we may not write, a full disk, /proc
            raise ConvertError(f"cannot write {path}: {e}") from None
        raise


def report_notes(tensors: list, log):
    """One line per distinct type fallback, with the number of tensors it hit."""
    notes = [t.note for t in tensors if t.note]
    for note in dict.fromkeys(notes):
        log(f"note: {notes.count(note)} tensor(s) fall back {note}")


def general_metadata(name: str, file_type: int) -> list:
    return [typed("general.name", name), typed("general.file_type", file_type),
            typed("general.quantization_version", QUANTIZATION_VERSION), typed("general.alignment", ALIGNMENT)]


def plan_table(tensors: list) -> str:
    """The --dry-run listing: one line per tensor, then totals."""
    lines = [f"{'tensor':<36} {'shape':<18} {'type':<6} {'bytes':>12}"]
    for t in tensors:
        lines.append(f"{t.name:<36} {'x'.join(map(str, t.shape)):<18} {t.qtype.name:<6} {t.nbytes:>12}"
                     + (f"  ({t.note})" if t.note else ""))
    lines.append(summary(tensors))
    return "\n".join(lines)


def summary(tensors: list) -> str:
    n_bytes, n_el = sum(t.nbytes for t in tensors), sum(t.n_elements for t in tensors)
    return (f"{len(tensors)} tensors, {n_el / 1e6:.2f} M weights, {n_bytes / 2**20:.2f} MiB of tensor data, "
            f"{8 * n_bytes / max(n_el, 1):.2f} bits/weight")


@dataclass
class WriteResult:
    path: Path | None  # None for a dry run
    tensors: list  # PlannedTensor
    notes: list  # type fallbacks
    summary: str


def finish(out: Path, arch: str, metadata: list, tensors: list, *, dry_run: bool, force: bool, progress,
           log) -> WriteResult:
    """The end of convert and quantize: a dry run prints the plan table (log, default stdout); otherwise the
    fallback notes, the file, and a summary line (log, default stderr)."""
    notes = [t.note for t in tensors if t.note]
    text = summary(tensors)
    if dry_run:
        (log or print)(plan_table(tensors))
        return WriteResult(None, tensors, notes, text)
    say = log or (lambda s: print(s, file=sys.stderr))
    report_notes(tensors, say)
    write_gguf(out, arch, metadata, tensors, force=force, progress=progress)
    say(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB): {text}")
    return WriteResult(out, tensors, notes, text)
