"""Issue 15 item 3: a dry run prints what would really run, and every problem the real run
would stop at first (exit 1), instead of a command that cannot run and exit 0.

Packer's version, AWS credentials and DNS are the machine's facts; they are set here so
the test is the same on every machine (Debian's Packer is 1.6.6: it cannot build the AMI).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import cli
from builder.targets import packer


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def machine(
    monkeypatch: pytest.MonkeyPatch,
    version: tuple[int, ...] | None,
    creds: bool = True,
    dns: bool = True,
) -> None:
    monkeypatch.setattr(packer, "which", lambda tool: f"/usr/bin/{tool}" if version else None)
    monkeypatch.setattr(packer, "packer_version", lambda: version)
    monkeypatch.setattr(packer, "aws_credentials_present", lambda env=None: creds)
    monkeypatch.setattr(packer, "_resolves", lambda host: dns)


def test_packer_16_cannot_build_the_ami_and_the_dry_run_says_so(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, (1, 6, 6), creds=False, dns=False)
    code, out, err = run_cli(capsys, "image", "aws", "--dry-run")
    assert code == 1
    assert out.startswith("packer build ")  # still what the real run would execute
    assert "packer 1.6.6 cannot build the AMI" in err
    assert "no AWS credentials found" in err
    assert "cannot resolve ec2.eu-central-1.amazonaws.com" in err
    # the staged template directory it names is one the real run creates first
    assert f"{workdir}/dist/aws/.packer-run/templates" in out
    assert f"the build first creates {workdir}/dist/aws/.packer-run/templates" in err
    assert not (workdir / "dist").exists()  # a dry run writes nothing there


def test_a_clean_dry_run_exits_0(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, (1, 11, 2))
    code, out, err = run_cli(capsys, "image", "aws", "--dry-run", "--allow-demo")
    assert code == 0, err
    assert out.rstrip().endswith(str(packer.packer_dir()))  # no staging for a current Packer


def test_qcow2_dry_run_names_the_seed_it_makes(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, (1, 11, 2), dns=False)
    code, out, err = run_cli(capsys, "image", "aws", "--target", "qcow2", "--dry-run")
    assert code == 1
    assert "qemu_ssh_private_key_file=" in out
    assert f"{workdir}/dist/aws/.packer-run/seed: NoCloud seed with a throwaway SSH key" in err
    assert "cannot resolve cloud-images.ubuntu.com" in err


def test_dry_run_without_packer_says_what_to_install(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, None)
    code, out, err = run_cli(capsys, "image", "aws", "--dry-run")
    assert code == 1
    assert "needs packer: apt-get install --no-install-recommends packer" in err


def test_dry_run_reports_a_foreign_dist_dir(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine(monkeypatch, (1, 11, 2))
    (workdir / "mine").mkdir()
    (workdir / "mine" / "keep.txt").write_text("x")
    code, _, err = run_cli(capsys, "image", "aws", "--dry-run", "-o", "mine")
    assert code == 1
    assert "mine: is not empty and was not created by nodeforge" in err
