"""Issue 15 item 14: the README cannot drift from the builder.

Every ```sh block in README.md carries a marker: ``<!-- runnable -->`` blocks are run as they
stand (bash -euo pipefail, in an empty temporary directory, with this checkout's
``builder`` on PATH); ``<!-- not runnable: why -->`` blocks are checked statically: every
``builder …`` line names a real command and only options it has, every ``make …`` line a
real target.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from builder.cli import cli

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
FENCE = re.compile(r"^(<!--(?P<mark>[^\n]*?)-->\n)?```sh\n(?P<body>.*?)^```", re.M | re.S)

pytestmark = pytest.mark.integration


def blocks() -> list[tuple[str, str, int]]:
    text = README.read_text()
    return [
        ((m["mark"] or "").strip(), m["body"], text[: m.start()].count("\n") + 1)
        for m in FENCE.finditer(text)
    ]


def commands(body: str) -> list[list[str]]:
    """The shell commands of a block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def test_every_sh_block_is_marked() -> None:
    found = blocks()
    assert found, "README.md has no ```sh blocks?"
    unmarked = [line for mark, _, line in found if not mark]
    assert unmarked == [], f"README.md lines {unmarked}: mark them runnable or not runnable"
    assert all(m == "runnable" or m.startswith("not runnable: ") for m, _, _ in found)
    assert any(m == "runnable" for m, _, _ in found)


@pytest.mark.parametrize(
    "body", [b for m, b, _ in blocks() if m == "runnable"], ids=lambda b: b.split()[1]
)
def test_runnable_blocks_run(body: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("BUILDER_PROFILES", "PYTHONPATH")}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        BUILDER_CACHE_DIR=str(tmp_path / "cache"),
        SOURCE_DATE_EPOCH="1767225600",
    )
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, f"{body}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _check_builder(words: list[str]) -> list[str]:
    cmd: click.Command = cli
    args = words[1:]
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        sub = cmd.commands.get(args[0])
        if sub is None:
            if isinstance(cmd, click.Group) and cmd is not cli:
                return [f"{' '.join(words)}: no command {args[0]!r}"]
            break
        cmd, args = sub, args[1:]
    known = {
        o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])
    }
    known |= {"--debug", "-v", "-q", "--verbose", "--quiet", "-h", "--help"}
    return [
        f"{' '.join(words)}: {cmd.name} has no option {a.split('=')[0]}"
        for a in args
        if a.startswith("-") and a.split("=")[0] not in known and not re.match(r"^-\d", a)
    ]


def test_not_runnable_blocks_name_real_commands_and_options() -> None:
    targets = set(re.findall(r"^([a-z0-9-]+):", (REPO / "Makefile").read_text(), re.M))
    problems: list[str] = []
    for mark, body, line in blocks():
        if mark == "runnable":
            continue
        for words in commands(body):
            if words[0] == "builder":
                problems += [f"README.md:{line}: {p}" for p in _check_builder(words)]
            elif words[0] == "make":
                problems += [
                    f"README.md:{line}: make has no target {w}"
                    for w in words[1:]
                    if "=" not in w and not w.startswith("-") and w not in targets
                ]
    assert problems == []
