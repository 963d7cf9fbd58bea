"""fetch: SHA256SUMS parsing, hash resolution, cache layout (no network here)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from builder.errors import BuilderError, UsageError
from builder.targets import fetch

H1, H2 = "a" * 64, "b" * 64


def test_parse_sha256sums_text_and_binary_mode() -> None:
    text = f"{H1} *ubuntu-24.04.3-live-server-amd64.iso\n{H2}  other.iso\n"
    assert fetch.parse_sha256sums(text, "ubuntu-24.04.3-live-server-amd64.iso") == H1
    assert fetch.parse_sha256sums(text, "other.iso") == H2
    assert fetch.parse_sha256sums(text, "missing.iso") is None
    assert fetch.parse_sha256sums("garbage\nzz  other.iso\n", "other.iso") is None


def test_pinned_sha256_validated() -> None:
    assert fetch.resolve_sha256(H1.upper(), None, "x") == H1
    assert fetch.resolve_sha256("sha256:" + H1, None, "x") == H1
    with pytest.raises(UsageError, match="iso.base.sha256"):
        fetch.resolve_sha256("abc", None, "x")
    with pytest.raises(UsageError, match="sha256sums_url"):
        fetch.resolve_sha256(None, None, "x")


def test_file_name_from_url() -> None:
    assert fetch.file_name("https://h/p/ubuntu.iso?x=1") == "ubuntu.iso"
    with pytest.raises(UsageError):
        fetch.file_name("https://h/")


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fetch.cache_dir() == tmp_path / "nodeforge" / "downloads"


def test_file_url_verified_in_place(tmp_path: Path) -> None:
    base = tmp_path / "base.iso"
    base.write_bytes(b"iso bytes")
    digest = hashlib.sha256(b"iso bytes").hexdigest()
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{digest} *base.iso\n")
    got = fetch.fetch(f"file://{base}", sha256sums_url=f"file://{sums}", cache=tmp_path / "c")
    assert got == base
    assert not (tmp_path / "c").exists()  # nothing copied
    with pytest.raises(BuilderError, match="sha256 mismatch"):
        fetch.fetch(f"file://{base}", sha256=H1, cache=tmp_path / "c")


def test_verify_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "f"
    f.write_bytes(b"x")
    fetch.verify_file(f, hashlib.sha256(b"x").hexdigest())
    with pytest.raises(BuilderError, match=f"{f}: sha256 mismatch") as exc:
        fetch.verify_file(f, H1)
    assert "--no-verify" in (exc.value.hint or "")


def _counting_hash(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = fetch.sha256_file

    def spy(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fetch, "sha256_file", spy)
    return calls


def test_local_file_hashed_once_while_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))
    calls = _counting_hash(monkeypatch)
    f = tmp_path / "base.iso"
    f.write_bytes(b"a" * 10000)
    want = hashlib.sha256(b"a" * 10000).hexdigest()
    fetch.verify_file(f, want)
    fetch.verify_file(f, want)
    assert fetch.file_sha256(f) == want
    assert calls == [f]  # the record answered the second and third time


def test_changed_file_is_hashed_again_even_with_size_and_mtime_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))
    calls = _counting_hash(monkeypatch)
    f = tmp_path / "base.iso"
    f.write_bytes(b"a" * 10000)
    good = hashlib.sha256(b"a" * 10000).hexdigest()
    fetch.verify_file(f, good)
    st = f.stat()
    with open(f, "r+b") as fh:  # one flipped byte, same size, mtime put back
        fh.seek(5000)
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(BuilderError, match="sha256 mismatch"):
        fetch.verify_file(f, good)  # ctime moved: not trusted, hashed again, refused
    assert len(calls) == 2
    with pytest.raises(BuilderError, match="sha256 mismatch"):
        fetch.verify_file(f, good)  # a failure is never remembered as a success


def test_a_replaced_file_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "base.iso"
    f.write_bytes(b"one")
    assert fetch.file_sha256(f) == hashlib.sha256(b"one").hexdigest()
    other = tmp_path / "other"
    other.write_bytes(b"two")
    os.replace(other, f)  # another inode at the same path
    assert fetch.file_sha256(f) == hashlib.sha256(b"two").hexdigest()
