"""Issue 15 item 4: the documented offline ISO path works, and meaningless option
combinations are rejected.

The checksum of a local ``--base-iso`` comes from ``--base-sha256``, ``--base-sha256sums
FILE`` or a ``SHA256SUMS`` beside the ISO, without any download. (The remaster itself is
replaced here by a copy: the unit lane runs no xorriso; tests/integration covers it.)
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import requests

from builder import cli
from builder.targets import iso

RELEASE_NAME = "ubuntu-24.04.3-live-server-amd64.iso"  # the file name onprem's iso.base.url has


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def offline(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network (any HTTP request fails the test) and a copy for a remaster."""

    def no_network(*a: object, **k: object) -> None:
        raise AssertionError(f"the offline path tried the network: {a!r}")

    monkeypatch.setattr(requests.Session, "request", no_network)
    monkeypatch.setattr(iso, "remaster", lambda base, out, tree, **kw: shutil.copyfile(base, out))
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(workdir / "cache"))
    base = workdir / "isos" / "ubuntu.iso"
    base.parent.mkdir()
    base.write_bytes(b"an ubuntu installer, honest" * 1000)
    return base


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checksum_on_the_command_line(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "-q",
        "image",
        "onprem",
        "--allow-demo",
        "--base-iso",
        str(offline),
        "--base-sha256",
        digest(offline),
    )
    assert code == 0, err
    assert Path(out.strip()).is_file()


def test_sha256sums_beside_the_iso(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (offline.parent / "SHA256SUMS").write_text(f"{digest(offline)} *{RELEASE_NAME}\n")
    code, out, err = run_cli(
        capsys, "-q", "image", "onprem", "--allow-demo", "--base-iso", str(offline)
    )
    assert code == 0, err


def test_sha256sums_file_given(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sums = offline.parent.parent / "sums.txt"
    sums.write_text(f"{'0' * 64}  other.iso\n{digest(offline)}  ubuntu.iso\n")
    code, _, err = run_cli(
        capsys,
        "-q",
        "image",
        "onprem",
        "--allow-demo",
        "--base-iso",
        str(offline),
        "--base-sha256sums",
        str(sums),
    )
    assert code == 0, err


def test_wrong_checksum_fails(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "image",
        "onprem",
        "--allow-demo",
        "--base-iso",
        str(offline),
        "--base-sha256",
        "ab" * 32,
    )
    assert code == 1
    assert "sha256 mismatch" in err
    assert out == ""


def test_no_checksum_offline_hints_the_offline_options(
    offline: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*a: object, **k: object) -> None:
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(requests.Session, "request", unreachable)
    code, _, err = run_cli(capsys, "image", "onprem", "--allow-demo", "--base-iso", str(offline))
    assert code == 1
    hint = [line for line in err.splitlines() if line.startswith("hint:")]
    assert hint and "--base-sha256" in hint[0] and "SHA256SUMS" in hint[0]
    assert "--no-verify" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["onprem", "--no-verify"], "--no-verify: only with --base-iso"),
        (["onprem", "--base-sha256", "ab" * 32], "--base-sha256: only with --base-iso"),
        (["onprem", "--base-iso", "ISO", "--no-verify", "--base-sha256", "ab" * 32], "contradict"),
        (["onprem", "--base-iso", "ISO", "--base-sha256", "xyz"], "not a sha256 hex digest"),
        (["aws", "--base-iso", "ISO"], "--base-iso: only for the iso target"),
        (["aws", "--no-verify"], "--no-verify: only for the iso target"),
    ],
    ids=["no-verify-alone", "sha-alone", "no-verify-and-sha", "bad-sha", "aws-base-iso", "aws-nv"],
)
def test_meaningless_combinations_are_rejected(
    offline: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [str(offline) if a == "ISO" else a for a in args]
    code, out, err = run_cli(capsys, "image", "--allow-demo", *args)
    assert code == 2, err
    assert message in err
    assert not (offline.parent.parent / "dist").exists()
    assert not (offline.parent.parent / "build").exists()
