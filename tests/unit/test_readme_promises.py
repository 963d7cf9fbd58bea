"""README promises with no test before issue 18 (finding 10), the unit-lane half.
The table promise -> test is tests/PROMISES.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from builder import cli
from builder.site import render
from builder.targets import packer


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


# README "Packer's downloads are cached in ~/.cache/nodeforge/packer (PACKER_CACHE_DIR)"
def test_packer_cache_dir_default_and_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PACKER_CACHE_DIR", raising=False)
    monkeypatch.delenv("BUILDER_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert packer._env()["PACKER_CACHE_DIR"] == f"{tmp_path}/.cache/nodeforge/packer"
    monkeypatch.setenv("PACKER_CACHE_DIR", "/srv/packer-cache")
    assert packer._env()["PACKER_CACHE_DIR"] == "/srv/packer-cache"


# README "exit code … 130 for Ctrl-C" (flash has its own tests; this is every other command)
@pytest.mark.parametrize("command", [["render", "aws"], ["show", "aws"]])
def test_ctrl_c_outside_flash_exits_130(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "render_files", interrupted)
    import builder.site.profile as profile

    monkeypatch.setattr(profile, "validate_data", interrupted)
    code, out, err = run_cli(capsys, *command)
    assert code == 130
    assert err.strip().splitlines()[-1] in ("interrupted", "aborted")  # click says "aborted"
    assert "Traceback" not in err and out == ""
    assert not (workdir / "build").exists()


def _init(capsys: pytest.CaptureFixture[str], d: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        capsys,
        "hub",
        "init",
        str(d),
        "--endpoint",
        "hub.example:51820",
        "--url",
        "https://hub.example:8443",
        "--overlay-cidr",
        "10.77.0.0/24",
        *extra,
    )


# README "hub overlay IP = first host unless --hub-ip"; `--force` replaces an existing hub.json
def test_hub_init_hub_ip_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "hub"
    code, _, err = _init(capsys, d, "--hub-ip", "10.77.0.9")
    assert code == 0, err
    cfg = json.loads((d / "hub.json").read_text())
    assert cfg["wireguard"]["hub_overlay_ip"] == "10.77.0.9"
    cert = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.77.0.9" in [str(i) for i in sans.get_values_for_type(x509.IPAddress)]
    first_ca = (d / "ca.pem").read_bytes()

    code, _, err = _init(capsys, d)  # again, without --force: refused, nothing changed
    assert code == 2 and "already exists" in err
    assert (d / "ca.pem").read_bytes() == first_ca

    code, _, err = _init(capsys, d, "--force")  # replaced: the first host again, a new CA
    assert code == 0, err
    cfg = json.loads((d / "hub.json").read_text())
    assert cfg["wireguard"]["hub_overlay_ip"] == "10.77.0.1"
    assert (d / "ca.pem").read_bytes() != first_ca

    code, _, err = _init(capsys, tmp_path / "bad", "--hub-ip", "10.78.0.1")
    assert code == 2 and "10.78.0.1" in err, err
    assert not (tmp_path / "bad" / "hub.json").exists()


# README "--debug (log every external command as `+ argv`, show tracebacks)"
@pytest.mark.allow_subprocess
def test_debug_logs_every_command_as_argv(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # an empty cache: a remembered pass would run no validator at all (nothing to log)
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(workdir / "cache"))
    code, _, err = run_cli(capsys, "--debug", "validate", "aws", "--skip", "packer-validate")
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.split("+ ", 1)[-1].startswith("shellcheck ") for line in lines), err
    assert any("+ systemd-analyze verify" in line for line in lines), err
