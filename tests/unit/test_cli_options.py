"""Issue 15 item 11: global options after the subcommand, --json on commands that produce a
result, validate --skip takes only known names (and completes them)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import pytest

from builder import cli
from builder.targets import CHECK_NAMES


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_quiet_after_the_subcommand(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "render", "onprem", "--set", "gpu.enabled=true")
    assert code == 0 and "rendered " in err  # the info line, without -q
    code, _, err = run_cli(capsys, "render", "onprem", "-q")
    assert code == 0
    assert "rendered " not in err


def test_debug_after_the_subcommand_shows_the_traceback(workdir: Path) -> None:
    from builder.errors import UsageError

    with pytest.raises(UsageError):
        cli.main(["show", "nope", "--debug"])


def test_verbose_after_a_nested_subcommand(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "hub", "init", "--site", "onprem", "h", "-v", "-v")
    assert code == 0, err
    assert logging.getLogger().level == logging.DEBUG  # -v -v: INFO - 2*10, clamped


def test_global_options_before_still_work(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "-q", "render", "onprem")
    assert code == 0 and "rendered " not in err


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (["render", "onprem"], {"site", "path", "input_hash", "files", "secret_files"}),
        (["seed", "onprem", "--hostname", "n1", "-o", "s.iso"], {"site", "path", "files"}),
        (["hub", "init", "--site", "onprem", "h"], {"config", "ca_pin", "profile"}),
    ],
    ids=["render", "seed", "hub-init"],
)
def test_json_results(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], keys: set[str]
) -> None:
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    assert keys <= set(json.loads(out))


def test_validate_json(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(
        capsys, "validate", "onprem", "--json", *[a for n in CHECK_NAMES for a in ("--skip", n)]
    )
    assert code == 0, err
    assert json.loads(out) == {
        "site": "onprem", "valid": True, "checks": ["profile-schema"],
        "skipped": sorted(CHECK_NAMES),
    }  # fmt: skip


def test_image_dry_run_json(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from builder.targets import packer

    monkeypatch.setattr(packer, "which", lambda tool: None)
    code, out, err = run_cli(capsys, "image", "aws", "--dry-run", "--json", "--allow-demo")
    assert code == 1  # no packer here: the problem is listed and the exit says so
    data = json.loads(out)
    assert data["dry_run"] is True and data["argv"][:2] == ["packer", "build"]
    assert any("needs packer" in p for p in data["problems"])


def test_token_create_json(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "hub", "init", "--site", "onprem", "h")[0] == 0
    code, out, err = run_cli(
        capsys, "hub", "token", "create", "--config", "h/hub.json", "--site", "onprem", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["token"].startswith("nf1.") and data["id"] in data["token"]
    assert data["site"] == "onprem" and data["uses"] == 1 and data["approve"] is False


def test_validate_skip_only_known_names(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "validate", "onprem", "--skip", "shelcheck")
    assert code == 2
    assert "'shelcheck' is not a check" in err
    assert "did you mean 'shellcheck'?" in err


def test_validate_skip_completes_the_names() -> None:
    cmd = cli.cli.commands["validate"]
    (skip,) = [p for p in cmd.params if p.name == "skip"]
    ctx = click.Context(cmd)
    assert [c.value for c in skip.shell_complete(ctx, "s")] == [
        n for n in CHECK_NAMES if n.startswith("s")
    ]
    assert {c.value for c in skip.shell_complete(ctx, "")} == set(CHECK_NAMES)


def test_file_and_device_arguments_complete_as_paths() -> None:
    def kinds(command: click.Command) -> dict[str, str]:
        ctx = click.Context(command)
        out = {}
        for p in command.params:
            items = p.shell_complete(ctx, "")
            if items and items[0].type in ("file", "dir"):
                out[p.name or ""] = items[0].type
        return out

    assert kinds(cli.cli.commands["render"])["output"] == "dir"
    assert kinds(cli.cli.commands["image"])["base_iso"] == "file"
    assert kinds(cli.cli.commands["flash"])["paths"] == "file"
    assert kinds(cli.cli.commands["seed"])["token_file"] == "file"


def test_main_in_process_leaves_sigterm_as_it_found_it(capsys: pytest.CaptureFixture[str]) -> None:
    """``cli.main`` installs a SIGTERM handler that unwinds (temp files, children); called
    in-process (a test, another program) it must put the caller's handler back, on success
    and on error alike: left behind, a SIGTERM to pytest failed whichever test ran next."""
    import signal

    def mine(signum: int, frame: object) -> None:  # the caller's own handler
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, mine)
    try:
        seen = []
        for args in (["profiles"], ["show", "no-such-site"]):
            code, _, _ = run_cli(capsys, *args)
            seen.append((code, signal.getsignal(signal.SIGTERM)))
        assert [c for c, _ in seen] == [0, 2]
        assert all(h is mine for _, h in seen)
    finally:
        signal.signal(signal.SIGTERM, before)
