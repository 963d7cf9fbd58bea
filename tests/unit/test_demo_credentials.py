"""Issue 15 item 7: the example profiles' demo hub credentials never pass silently.

Rendering says so loudly; an image build refuses (exit 3) unless told ``--allow-demo``.
The demo values are the shipped files' own (profiles/demo-hub-ca.pem, base.yaml's key); a
profile with its own hub (from a real ``builder hub init``) builds without a word.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder import cli
from builder.site.profile import load_profile


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def own_hub(workdir: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """--set options pointing onprem at a hub made by the real `builder hub init`."""
    code, out, err = run_cli(capsys, "hub", "init", "--site", "onprem", "hub", "--json")
    assert code == 0, err
    values = json.loads(out)
    return [
        "--set", f"enrollment.ca_cert=file:{workdir / 'hub' / 'ca.pem'}",
        "--set", f"enrollment.ca_pin={values['ca_pin']}",
        "--set", f"wireguard.hub_public_key={values['hub_public_key']}",
    ]  # fmt: skip


def test_render_warns_loudly(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "render", "onprem")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert any("DEMO hub credentials" in line for line in warnings)
    assert any("enrollment.ca_pin" in line for line in warnings)
    assert any("wireguard.hub_public_key" in line for line in warnings)


def test_image_refuses_the_demo_credentials(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "image", "onprem", "--base-iso", "x.iso")
    assert code == 3
    assert out == ""
    assert "refusing to build an image with the demo hub credentials" in err
    assert "--allow-demo" in err
    assert not (workdir / "dist").exists()


def test_a_dry_run_lists_the_refusal(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.targets import packer

    monkeypatch.setattr(packer, "which", lambda tool: None)  # no `packer version` here
    code, out, err = run_cli(capsys, "image", "aws", "--target", "qcow2", "--dry-run")
    assert code == 1
    assert "refusing to build an image with the demo hub credentials" in err


def test_own_hub_is_quiet(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sets = own_hub(workdir, capsys)
    code, _, err = run_cli(capsys, "render", "onprem", *sets)
    assert code == 0, err
    assert "DEMO" not in err
    prof = load_profile("onprem", overrides=[s for s in sets if s != "--set"])
    assert prof.demo_credentials() == []


def test_only_the_key_left_is_still_named(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = own_hub(workdir, capsys)[:4]  # own CA, the demo WireGuard key
    prof = load_profile("onprem", overrides=[s for s in sets if s != "--set"])
    assert prof.demo_credentials() == ["wireguard.hub_public_key (the demo hub key)"]
