"""Files fetched from pinned PyPI packages once and kept in the llamba cache: llama.cpp's vocab-only GGUFs with
their test vectors and llama.cpp's own HF-to-GGUF converter (llama-cpp-python source package), and Mistral's
SentencePiece model (mistral-common)."""

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from runtime import registry

LLAMA_CPP_SDIST = ("llama-cpp-python==0.3.36", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
MISTRAL_COMMON = ("mistral-common==1.13.1", "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af")


def fetch_member(requirement: str, member: str, sha256: str, dest: Path, keep: tuple[str, ...] = ()) -> Path:
    """Download a pinned package with pip once (sha256 checked) and keep one member of it in the cache at dest:
    a file of the wheel, or with `keep` (name prefixes inside the folder `member`) that folder of the source
    package, holding only the entries whose names start with one of them."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement]
        if keep:
            cmd[5:5] = ["--no-binary", requirement.split("==")[0]]
        subprocess.run(cmd, check=True, capture_output=True)
        (archive,) = Path(tmp).iterdir()
        if hashlib.sha256(archive.read_bytes()).hexdigest() != sha256:
            raise AssertionError(f"{archive.name}: sha256 mismatch")
        if keep:
            with tarfile.open(archive) as tar:
                wanted = [m for m in tar.getmembers() if m.name.startswith(tuple(f"{member}/{k}" for k in keep))]
                tar.extractall(tmp, members=wanted, filter="data")
            (Path(tmp) / member).rename(dest)
        else:
            with zipfile.ZipFile(archive) as z:
                dest.write_bytes(z.read(member))
    return dest


def _llama_cpp_folder(folder: str, keep: tuple[str, ...], name: str) -> Path:
    """The entries `keep` of `folder` of the llama.cpp tree vendored in the llama-cpp-python source package,
    cached as `name`."""
    req, sha = LLAMA_CPP_SDIST
    member = f"llama_cpp_python-{req.split('==')[1]}/vendor/llama.cpp{folder}"
    return fetch_member(req, member, sha, registry.cache_dir() / name, keep)


def llama_cpp_vocab_dir() -> Path:
    """The folder of llama.cpp's `ggml-vocab-*.gguf` files and `.inp`/`.out` test vectors."""
    return _llama_cpp_folder("/models", ("ggml-vocab-",), "vocab/llama.cpp-models")


def llama_cpp_converter_dir() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its `conversion` package and its own gguf-py."""
    return _llama_cpp_folder("", ("convert_hf_to_gguf.py", "conversion/", "gguf-py/"),
                             f"llama.cpp-converter-{LLAMA_CPP_SDIST[0].split('==')[1]}")


def mistral_tokenizer_model() -> Path:
    """Mistral-7B v0.1's SentencePiece tokenizer.model (32000 pieces)."""
    req, sha = MISTRAL_COMMON
    return fetch_member(req, "mistral_common/data/tokenizer.model.v1", sha,
                        registry.cache_dir() / "vocab" / "mistral-tokenizer.model.v1")


def read_vectors(vocab_dir: Path, name: str) -> list:
    """llama.cpp's test vectors for `ggml-vocab-{name}.gguf`: [(text, ids)], made with the real HF tokenizer."""
    texts = (vocab_dir / f"ggml-vocab-{name}.gguf.inp").read_text("utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    lines = (vocab_dir / f"ggml-vocab-{name}.gguf.out").read_text("utf-8").splitlines()
    assert len(texts) == len(lines) > 30
    return [(text, [int(x) for x in line.split()]) for text, line in zip(texts, lines, strict=True)]
