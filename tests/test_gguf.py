"""runtime.gguf: valid files round-trip against the gguf package (GGUFWriter builds them, GGUFReader reads
the real models), and every malformed file raises GGUFError naming the file and the problem."""

import gc
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import GGUFError
from runtime.gguf import GGUFFile

REAL_MODELS = ["smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
ROOT = Path(__file__).resolve().parents[1]

# value types, for hand-packed files
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
VOCAB = ["<unk>", "", "héllo", " wörld", "日本", "🦙", "a\nb", "\x7f", "end"]


# ---- building files ----------------------------------------------------------------------------------

def write_valid(path, version=3) -> dict:
    """A small GGUF written by gguf.GGUFWriter (the oracle of the format): every scalar type, string and
    numeric arrays, and tensors F32, F16, Q8_0 (gguf.quants), Q4_K raw blocks. Returns what was written."""
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(path, "llama")
    scalars = {"t.u8": (200, GGUFValueType.UINT8), "t.i8": (-100, GGUFValueType.INT8),
               "t.u16": (60000, GGUFValueType.UINT16), "t.i16": (-30000, GGUFValueType.INT16),
               "t.u32": (4_000_000_000, GGUFValueType.UINT32), "t.i32": (-2_000_000_000, GGUFValueType.INT32),
               "t.f32": (0.5, GGUFValueType.FLOAT32), "t.u64": (2**63 + 5, GGUFValueType.UINT64),
               "t.i64": (-(2**62), GGUFValueType.INT64), "t.f64": (1e-300, GGUFValueType.FLOAT64),
               "t.bool": (True, GGUFValueType.BOOL), "t.str": ("héllo 🦙", GGUFValueType.STRING)}
    for key, (v, vt) in scalars.items():
        w.add_key_value(key, v, vt)
    w.add_array("t.tokens", VOCAB)
    w.add_key_value("t.scores", [0.25, -1.5, 3.0], GGUFValueType.ARRAY, GGUFValueType.FLOAT32)
    w.add_key_value("t.ids", [1, 2, 2**40], GGUFValueType.ARRAY, GGUFValueType.INT64)
    w.add_key_value("t.flags", [True, False], GGUFValueType.ARRAY, GGUFValueType.BOOL)
    f32 = rng.standard_normal((3, 8)).astype(np.float32)
    f16 = rng.standard_normal((2, 4)).astype(np.float16)
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
    q4k = rng.integers(0, 256, (2, 144), dtype=np.uint8)  # raw blocks: any bytes are a valid layout
    tensors = {"a.f32": f32, "b.f16": f16, "c.q8_0": q8, "d.q4_k": q4k}
    w.add_tensor("a.f32", f32)
    w.add_tensor("b.f16", f16)
    w.add_tensor("c.q8_0", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("d.q4_k", q4k, raw_dtype=GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version != 3:
        data = bytearray(Path(path).read_bytes())
        data[4:8] = struct.pack("<I", version)
        Path(path).write_bytes(bytes(data))
    return {"scalars": {k: v for k, (v, _) in scalars.items()}, "tensors": tensors}


def s(text) -> bytes:
    """A GGUF string: uint64 length + bytes."""
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def tinfo(name, dims, type_id: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset)


def pack(kvs=(), tinfos=(), data=b"", version=3, counts=None, alignment=32) -> bytes:
    """A hand-packed GGUF: header, metadata, tensor infos, padding to `alignment`, data."""
    n_tensors, n_kv = counts or (len(tinfos), len(kvs))
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(tinfos)
    return head + bytes(-len(head) % alignment) + data


ARCH = kv("general.architecture", STRING, s("llama"))


def put(tmp_path, data: bytes, name="m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def open_error(path) -> str:
    with pytest.raises(GGUFError) as e:
        GGUFFile(path)
    msg = str(e.value)
    assert str(path) in msg
    return msg


# ---- valid files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [2, 3])
def test_round_trip_against_gguf_writer(tmp_path, version):
    path = tmp_path / "v.gguf"
    written = write_valid(path, version)
    with GGUFFile(path) as f:
        assert f.version == version and f.architecture == "llama"
        for key, v in written["scalars"].items():
            got = f.metadata[key]
            assert got == v and type(got) is type(v), key
        assert f.metadata["t.tokens"] == VOCAB
        np.testing.assert_array_equal(f.metadata["t.scores"], np.array([0.25, -1.5, 3.0], np.float32))
        assert f.metadata["t.scores"].dtype == np.float32
        assert f.metadata["t.ids"].dtype == np.int64 and f.metadata["t.ids"].tolist() == [1, 2, 2**40]
        assert f.metadata["t.flags"].dtype == bool and f.metadata["t.flags"].tolist() == [True, False]
        assert list(f.tensors) == list(written["tensors"])
        t = f.tensors
        assert (t["a.f32"].qtype.name, t["a.f32"].shape) == ("F32", (3, 8))
        np.testing.assert_array_equal(t["a.f32"].array(), written["tensors"]["a.f32"])
        np.testing.assert_array_equal(t["b.f16"].array(), written["tensors"]["b.f16"])
        assert (t["c.q8_0"].qtype.name, t["c.q8_0"].shape, t["c.q8_0"].raw.shape) == ("Q8_0", (2, 64), (2, 68))
        np.testing.assert_array_equal(t["c.q8_0"].raw, written["tensors"]["c.q8_0"])
        with pytest.raises(GGUFError, match="'c.q8_0' is Q8_0, not a float array"):
            t["c.q8_0"].array()
        assert (t["d.q4_k"].qtype.name, t["d.q4_k"].shape, t["d.q4_k"].raw.shape) == ("Q4_K", (2, 256), (2, 144))
        np.testing.assert_array_equal(t["d.q4_k"].raw, written["tensors"]["d.q4_k"])
        for info in t.values():
            assert info.offset % f.alignment == 0 and info.raw.nbytes == info.nbytes
            assert not info.raw.flags.writeable and not info.raw.flags.owndata  # a view over the map


def test_hand_packer_agrees_with_gguf_reader(tmp_path):
    """The packer used for the malformed files below writes what gguf.GGUFReader accepts."""
    data = np.arange(64, dtype=np.float32)
    path = put(tmp_path, pack([ARCH, kv("k", ARRAY, struct.pack("<IQ", STRING, 2) + s("x") + s("ÿ"))],
                              [tinfo("w", [8, 8], 0, 0)], data.tobytes()))
    ref = gguf.GGUFReader(path)
    with GGUFFile(path) as f:
        assert f.metadata["k"] == ref.fields["k"].contents() == ["x", "ÿ"]
        assert f.tensors["w"].offset == ref.tensors[0].data_offset
        np.testing.assert_array_equal(f.tensors["w"].array(), ref.tensors[0].data)


@pytest.mark.parametrize("strings", [
    [chr(c) for c in range(128)] + ["é", ""],  # every ASCII byte: no free separator, decoded one by one
    ["", "", ""],
    ["x" * 1000, "", "🦙" * 3, "\x00"],
])
def test_string_arrays(tmp_path, strings):
    payload = struct.pack("<IQ", STRING, len(strings)) + b"".join(s(x) for x in strings)
    path = put(tmp_path, pack([ARCH, kv("a", ARRAY, payload), kv("b", STRING, s("after"))]))
    with GGUFFile(path) as f:
        assert f.metadata["a"] == strings and f.metadata["b"] == "after"


def test_close_releases_the_file_and_views_stay_valid(tmp_path):
    path = tmp_path / "v.gguf"
    written = write_valid(path)

    def fds():  # descriptors of this process open on `path`
        return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(path.resolve()) for fd in os.listdir("/proc/self/fd"))

    f = GGUFFile(path)
    assert fds() == 1  # the map's own descriptor
    f.close()
    assert fds() == 0 and f.tensors == {} and f.metadata["t.str"] == "héllo 🦙"
    f.close()  # idempotent

    with GGUFFile(path) as f:
        view = f.tensors["a.f32"].array()
    assert fds() == 1  # the view keeps the map alive ...
    np.testing.assert_array_equal(view, written["tensors"]["a.f32"])  # ... and readable
    del view
    gc.collect()
    assert fds() == 0


# ---- malformed files ----------------------------------------------------------------------------------

F32_DATA = np.zeros(64, np.float32).tobytes()
U64_MAX = 2**64 - 1
BAD_FILES = {
    "bad magic": (b"GGML" + bytes(60), "not a GGUF file"),
    "version 1": (pack([ARCH], version=1), "unsupported GGUF version 1"),
    "version 4": (pack([ARCH], version=4), "unsupported GGUF version 4"),
    "big-endian": (pack([ARCH], version=3 << 24), "big-endian"),
    "absurd counts": (pack([ARCH], counts=(0, 2**63)), "header claims"),
    "key length past end": (pack([struct.pack("<Q", U64_MAX) + b"key"]), "truncated file"),
    "string length past end": (pack([kv("k", STRING, struct.pack("<Q", U64_MAX) + b"abc")]), "truncated file"),
    "numeric array past end": (pack([kv("k", ARRAY, struct.pack("<IQ", F32, 2**61))]), "claims 2305843009213693952"),
    "string array past end": (pack([kv("k", ARRAY, struct.pack("<IQ", STRING, 2**40) + s("a"))]), "claims"),
    "string element past end": (pack([kv("k", ARRAY, struct.pack("<IQ", STRING, 2) + s("a") +
                                         struct.pack("<Q", 50) + b"short")]), "'k'[1] runs past the end"),
    "huge string element": (pack([kv("k", ARRAY, struct.pack("<IQ", STRING, 3) + s("a") +
                                     struct.pack("<Q", U64_MAX) + b"x" * 40)]), "'k'[1] runs past the end"),
    "unknown value type": (pack([kv("k", 13, b"\0" * 8)]), "unknown metadata value type 13"),
    "unknown element type": (pack([kv("k", ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)]),
                             "unknown array element type 99"),
    "nested arrays": (pack([kv("k", ARRAY, struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", U8, 1) + b"\1")]),
                      "arrays of arrays"),
    "bool not 0/1": (pack([kv("k", BOOL, b"\2")]), "neither 0 nor 1"),
    "bool array not 0/1": (pack([kv("k", ARRAY, struct.pack("<IQ", BOOL, 2) + b"\1\7")]), "other than 0 and 1"),
    "key not UTF-8": (pack([kv(b"ab\xff", U8, b"\1")]), "metadata key #0 is not valid UTF-8"),
    "value not UTF-8": (pack([kv("k", STRING, s(b"\xc3("))]), "metadata 'k' is not valid UTF-8"),
    "element not UTF-8": (pack([kv("k", ARRAY, struct.pack("<IQ", STRING, 3) + s("ok") + s("é") + s(b"a\xe2\x82"))]),
                          "'k'[2] is not valid UTF-8"),
    "element split sequence": (pack([kv("k", ARRAY, struct.pack("<IQ", STRING, 2) + s(b"\xe2\x82") + s(b"\xac"))]),
                               "'k'[0] is not valid UTF-8"),
    "element not UTF-8 (slow path)": (pack([kv("k", ARRAY, struct.pack("<IQ", STRING, 129) +
                                                b"".join(s(chr(c)) for c in range(128)) + s(b"\x80"))]),
                                       "'k'[128] is not valid UTF-8"),
    "tensor name not UTF-8": (pack([ARCH], [tinfo(b"w\xfe", [64])], F32_DATA), "name of tensor #0 is not valid UTF-8"),
    "duplicate key": (pack([ARCH, kv("k", U8, b"\1"), kv("k", U8, b"\2")]), "duplicate metadata key 'k'"),
    "duplicate tensor": (pack([ARCH], [tinfo("w", [32]), tinfo("w", [32], 0, 128)], F32_DATA * 2),
                         "duplicate tensor name 'w'"),
    "alignment 0": (pack([kv("general.alignment", U32, struct.pack("<I", 0))]), "power of two, got 0"),
    "alignment 48": (pack([kv("general.alignment", U32, struct.pack("<I", 48))]), "power of two, got 48"),
    "alignment not uint32": (pack([kv("general.alignment", U64, struct.pack("<Q", 32))]), "must be a uint32"),
    "zero dimensions": (pack([ARCH], [tinfo("w", [])]), "has 0 dimensions"),
    "five dimensions": (pack([ARCH], [tinfo("w", [1] * 5)]), "has 5 dimensions"),
    "empty shape": (pack([ARCH], [tinfo("w", [64, 0])], F32_DATA), "empty shape"),
    "shape overflows": (pack([ARCH], [tinfo("w", [2**32, 2**32, 2**32])], F32_DATA), "overflows"),
    "not a block multiple": (pack([ARCH], [tinfo("w", [33, 2], int(GGMLQuantizationType.Q8_0))], bytes(256)),
                             "row length 33 is not a multiple of the Q8_0 block size 32"),
    "unknown tensor type": (pack([ARCH], [tinfo("w", [64], 99)], F32_DATA), "unknown or unsupported GGML type id 99"),
    "removed tensor type Q4_2": (pack([ARCH], [tinfo("w", [64], 4)], F32_DATA), "type id 4"),
    "unaligned offset": (pack([ARCH], [tinfo("w", [8], 0, 4)], F32_DATA), "offset 4 is not aligned to 32"),
    "data past end": (pack([ARCH], [tinfo("w", [64])], F32_DATA[:-4]), "runs past the end of the file"),
    "offset past end": (pack([ARCH], [tinfo("w", [8], 0, 2**62)], F32_DATA), "runs past the end of the file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_file(tmp_path, case):
    data, expected = BAD_FILES[case]
    t = time.perf_counter()
    msg = open_error(put(tmp_path, data))
    assert expected in msg, msg
    assert time.perf_counter() - t < 1.0  # no hang, no giant allocation


def test_not_a_file(tmp_path):
    assert "no such file" in open_error(tmp_path / "missing.gguf")
    assert "is a directory" in open_error(tmp_path)
    assert "only 4 bytes" in open_error(put(tmp_path, b"GGUF"))


def test_truncated_at_every_byte(tmp_path):
    """Every proper prefix of a valid file fails with a GGUFError; the message says where it broke."""
    path = tmp_path / "v.gguf"
    write_valid(path)
    size = path.stat().st_size
    ref = gguf.GGUFReader(path)
    assert max(t.data_offset + t.n_bytes for t in ref.tensors) == size  # no trailing padding
    for n in range(size - 1, -1, -1):  # shrink in place: rewriting a file each time is slow on ext4
        os.truncate(path, n)
        msg = open_error(path)
        if n < 24:
            assert "not a GGUF file" in msg or "truncated file" in msg, (n, msg)
        elif n < ref.data_offset:
            assert "truncated file" in msg or "runs past the end" in msg, (n, msg)
        else:
            assert "runs past the end of the file" in msg, (n, msg)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_files_load_or_raise_gguf_error(data):
    """Any truncation or byte overwrite of a valid file either loads, with every tensor view inside the
    file, or raises GGUFError: never another exception."""
    base = _valid_bytes()
    blob = bytearray(base[:data.draw(st.one_of(st.just(len(base)), st.integers(0, len(base))), "length")])
    for _ in range(data.draw(st.integers(0, 6), "n_writes")):
        if blob:
            pos = data.draw(st.integers(0, len(blob) - 1))
            blob[pos:pos + 1] = data.draw(st.sampled_from([b"\x00", b"\xff", b"\x80", b"\x07", b"\x20"]))
    with tempfile.NamedTemporaryFile(suffix=".gguf") as tmp:
        tmp.write(blob)
        tmp.flush()
        try:
            f = GGUFFile(tmp.name)
        except GGUFError as e:
            assert tmp.name in str(e)
            return
        with f:
            for info in f.tensors.values():
                assert f.data_offset <= info.offset and info.offset + info.nbytes <= len(blob)
                assert info.raw.nbytes == info.nbytes
                assert bytes(info.raw.reshape(-1)) == bytes(blob[info.offset:info.offset + info.nbytes])


_VALID = []


def _valid_bytes() -> bytes:
    if not _VALID:
        with tempfile.TemporaryDirectory() as d:
            write_valid(Path(d) / "v.gguf")
            _VALID.append((Path(d) / "v.gguf").read_bytes())
    return _VALID[0]


# ---- real models --------------------------------------------------------------------------------------

class PlainReader(gguf.GGUFReader):
    """gguf.GGUFReader over a plain ndarray instead of np.memmap, whose per-slice __array_finalize__ makes
    parsing a 262144-token vocabulary take minutes. The parsing code is the package's, untouched."""

    data = property(lambda self: self._plain, lambda self, v: setattr(self, "_plain", v.view(np.ndarray)))


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_matches_gguf_reader(model_path, name):
    path = model_path(name)
    ref = PlainReader(path)
    with GGUFFile(path) as f:
        fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
        assert list(f.metadata) == list(fields)
        for key, field in fields.items():
            ours, theirs = f.metadata[key], field.contents()
            if field.types[0] == GGUFValueType.ARRAY and field.types[-1] != GGUFValueType.STRING:
                assert ours.dtype == field.parts[field.data[0]].dtype, key
                np.testing.assert_array_equal(ours, np.array(theirs), err_msg=key)
            else:
                assert ours == theirs and type(ours) is type(theirs), key
        assert list(f.tensors) == [t.name for t in ref.tensors]
        for t in ref.tensors:
            info = f.tensors[t.name]
            assert int(info.qtype) == int(t.tensor_type), t.name
            assert info.shape == tuple(reversed(t.shape.tolist())), t.name
            assert (info.offset, info.nbytes) == (t.data_offset, t.n_bytes), t.name
            ref_raw = t.data.view(np.uint8).reshape(info.raw.shape)
            for rows in (slice(None, 2), slice(-2, None)):  # a sample: the first and last rows of each tensor
                np.testing.assert_array_equal(info.raw[rows], ref_raw[rows], err_msg=t.name)


def test_opening_does_not_read_tensor_data(model_path):
    """Peak RSS of a fresh process while it opens the 1.1 GB model: tens of MB, not the file (measured:
    98 MB after the imports, peak 145 MB). The peak is reset after the imports, whose cost (Numba may
    compile on a cold cache) is not the reader's."""
    path = model_path("qwen2.5-coder-1.5b-instruct")
    code = """if True:
        import sys
        from runtime.gguf import GGUFFile

        def mb(field):
            return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1]) / 1024

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM)
        before = mb("VmRSS:")
        g = GGUFFile(sys.argv[1])
        assert len(g.tensors) > 300 and len(g.metadata["tokenizer.ggml.tokens"]) > 150000
        print(before, mb("VmHWM:"))
    """
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, cwd=ROOT)
    before, peak = map(float, out.stdout.split())
    print(f"RSS after imports {before:.0f} MB, peak while opening {peak:.0f} MB, file {path.stat().st_size >> 20} MiB")
    assert peak < 300 and peak - before < 100
