"""fetch: SHA256SUMS parsing, hash resolution, cache layout (no network here)."""

from __future__ import annotations

import hashlib
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


def test_verify_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    fetch.verify_file(f, hashlib.sha256(b"x").hexdigest())
    with pytest.raises(BuilderError, match=f"{f}: sha256 mismatch") as exc:
        fetch.verify_file(f, H1)
    assert "--no-verify" in (exc.value.hint or "")
