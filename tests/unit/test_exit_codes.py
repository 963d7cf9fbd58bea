"""Issue 15 item 10: one exit-code table across commands, documented and tested.

0 ok, 1 an action failed, 2 bad input/usage, 3 refused for safety (flash), 130 interrupted.
A missing tool is its own message ("needs packer: apt-get install … packer"), never
"the rendered tree failed validation".
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from builder import cli, errors
from builder.run import require
from builder.targets import packer

TABLE = {0: "ok", 1: "failed", 2: "usage", 3: "refused", 130: "interrupted"}
FIXTURES = Path(__file__).parent / "fixtures" / "blockdev"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_the_table_is_the_one_in_errors_and_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    consts = {
        errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_REFUSED,
        errors.EXIT_INTERRUPTED,
    }  # fmt: skip
    assert consts == set(TABLE)
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    documented = {int(m) for m in re.findall(r"^\s+(\d+)\s{2,}\S", out, re.M)}
    assert documented == set(TABLE)
    assert errors.Refused("x").exit_code == 3
    assert errors.Interrupted("x").exit_code == 130
    assert errors.ToolMissing("x").exit_code == 1
    assert errors.UsageError("x").exit_code == 2


def test_ok_is_0(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "profiles")[0] == 0


@pytest.mark.parametrize(
    "args",
    [
        ["render", "--no-such-option"],
        ["show", "awz"],
        ["render", "aws", "--set", "wireguard.mtu=1"],
    ],
    ids=["bad-option", "unknown-site", "bad-value"],
)
def test_bad_input_is_2(workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err


def test_missing_tool_is_1_with_its_own_message(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.site import validate

    monkeypatch.setattr(validate, "which", lambda tool: None)
    code, out, err = run_cli(capsys, "validate", "onprem")
    assert code == 1
    assert out == ""
    assert "error: needs shellcheck: apt-get install --no-install-recommends shellcheck" in err
    assert "error: needs cloud-init: apt-get install --no-install-recommends cloud-init" in err
    assert "failed validation" not in err
    assert "--skip shellcheck" in err


def test_missing_packer_is_1(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # packer looked up on an empty PATH (never this process's PATH: the boot lane's threads
    # start QEMU with it meanwhile in a whole `pytest tests` run)
    monkeypatch.setattr(packer, "require", functools.partial(require, search="/nonexistent"))
    code, _, err = run_cli(capsys, "image", "aws", "--allow-demo")
    assert code == 1
    assert "error: needs packer: apt-get install --no-install-recommends packer" in err


def test_flash_refused_for_safety_is_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "a.iso"
    image.write_bytes(b"\0" * 1024 * 1024)
    root = FIXTURES / "laptop"
    monkeypatch.setenv("BUILDER_SYS_ROOT", str(root / "sys"))
    monkeypatch.setenv("BUILDER_MOUNTINFO", str(root / "mountinfo"))
    monkeypatch.setenv("BUILDER_SWAPS", str(root / "swaps"))
    code, _, err = run_cli(capsys, "flash", "--yes", "--force", str(image), "/dev/nvme0n1")
    assert code == 3, err
    assert "refusing to flash /dev/nvme0n1" in err


def test_interrupted_is_130(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builder.site.profile

    def ctrl_c(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(builder.site.profile, "list_sites", ctrl_c)
    code, _, err = run_cli(capsys, "profiles")
    assert code == 130
    assert err.strip() == "interrupted"
