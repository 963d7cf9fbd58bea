"""`builder image` for Packer targets: dry run, wrong target, no tracebacks."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli, main
from builder.run import require
from builder.targets import packer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_tools(monkeypatch, tmp_path):
    monkeypatch.setattr(packer, "which", lambda tool: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUILDER_PROFILES", str(REPO / "profiles"))


def test_ami_dry_run_prints_the_command_only():
    r = CliRunner().invoke(cli, ["image", "aws", "--allow-demo", "--dry-run"])
    # no packer here: the dry run still prints the command, then says the run would stop
    assert r.exit_code == 1, r.output
    assert "needs packer" in str(r.exception)
    [line] = r.stdout.splitlines()
    assert line.startswith("packer build -color=false -on-error=cleanup -only=amazon-ebs.node ")
    assert "/build/aws/packer/site.auto.pkrvars.json" in line
    assert Path("build/aws/scripts/provision.sh").exists()  # rendered first
    assert not Path("dist").exists()


def test_qcow2_dry_run_via_target_override():
    r = CliRunner().invoke(cli, ["image", "aws", "--allow-demo", "--target", "qcow2", "--dry-run"])
    assert r.exit_code == 1 and "needs packer" in str(r.exception), r.output
    assert "-only=qemu.node" in r.stdout and "-var=qemu_accelerator=" in r.stdout


def test_iso_site_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["image", "onprem", "--allow-demo", "--target", "iso", "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--dry-run and --base-image are for ami/qcow2 targets" in err
    assert "Traceback" not in err


def test_missing_packer_is_a_clear_error(capsys, monkeypatch):
    # packer looked up on an empty PATH, not this process's (test_exit_codes says why)
    monkeypatch.setattr(packer, "require", functools.partial(require, search="/nonexistent"))
    with pytest.raises(SystemExit) as exc:
        main(["image", "aws", "--allow-demo"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error: needs packer: apt-get install --no-install-recommends packer" in err
    assert "hint:" in err
