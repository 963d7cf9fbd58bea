"""CLI exit codes and messages, driven through builder.cli.main as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder import cli


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and "0.1.0" in out


def test_profiles(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "--json")
    assert code == 0
    assert [p["site"] for p in json.loads(out)] == ["aws", "onprem"]


def test_show_masks_secrets(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW", "topsecret")
    code, out, err = run_cli(capsys, "show", "aws", "--json", "--set", "admin.password=env:PW")
    assert code == 0, err
    data = json.loads(out)
    assert data["admin"]["password"] == "env:***"
    assert data["site"] == "aws"
    assert "topsecret" not in out


def test_validation_error_exit_2_no_traceback_nothing_written(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "render", "aws", "--set", "crio.version=1.33", "--set", "wireguard.mtu=1"
    )
    assert code == 2
    assert out == ""
    assert "error: --set: crio.version: CRI-O 1.33 does not match Kubernetes 1.35" in err
    assert "error: --set: wireguard.mtu: 1 is less than the minimum of 1280" in err
    assert "Traceback" not in err
    assert not (workdir / "build").exists()


def test_unknown_site_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "show", "awz")
    assert code == 2
    assert err.splitlines() == [
        "error: profiles/awz.yaml: no such site profile",
        "hint: did you mean 'aws'?",
    ]


def test_bad_option_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "render", "--no-such-option")
    assert code == 2
    assert "No such option" in err


def test_render_prints_path_only_on_stdout(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "-q", "render", "onprem", "-o", "out/onprem")
    assert code == 0
    assert out.strip() == "out/onprem"
    assert (workdir / "out/onprem/cloud-init/user-data").exists()


def test_internal_error_is_short_without_debug(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builder.site.profile

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(builder.site.profile, "list_sites", boom)
    code, _, err = run_cli(capsys, "profiles")
    assert code == 1
    assert "internal error: RuntimeError: kaboom" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "profiles"])


def test_completion_lists_sites(workdir: Path) -> None:
    import click

    ctx = click.Context(cli.cli)
    assert cli._complete_site(ctx, None, "o") == ["onprem"]  # type: ignore[arg-type]


@pytest.mark.allow_subprocess  # the dry run asks `packer version` which templates to stage
def test_image_dispatches_ami_to_packer_dry_run(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "-q", "image", "aws", "--allow-demo", "--dry-run")
    # exit 1 when this machine could not really build it (tests/unit/test_dry_run.py)
    assert code == 0 or "the real build would stop before Packer runs" in err, err
    assert out.startswith("packer build ")
    assert "-only=amazon-ebs." in out
    assert f"-var-file={workdir}/build/aws/packer/site.auto.pkrvars.json" in out


def test_image_iso_rejects_packer_options(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "image", "onprem", "--allow-demo", "--dry-run")
    assert code == 2
    assert "--dry-run and --base-image are for ami/qcow2 targets" in err
