"""Issue 15 item 13: the Makefile. Targets that only read do not check 30 apt packages;
``make help`` honours NO_COLOR and a non-terminal, and documents SET=, ARGS=, DEVICE=;
``.PHONY`` names exactly the targets that are not files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKEFILE = REPO / "Makefile"

pytestmark = [
    pytest.mark.allow_subprocess,
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
]


def make(*args: str, tty: bool = False, env: dict[str, str] | None = None) -> str:
    import os

    full = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | (env or {})
    argv = ["make", "--no-print-directory", "-C", str(REPO), *args]
    if tty:  # util-linux script(1) gives make a terminal
        argv = ["script", "-qec", " ".join(argv), "/dev/null"]
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, env=full, timeout=60
    ).stdout


def rule_targets() -> set[str]:
    text = MAKEFILE.read_text()
    names = set()
    for m in re.finditer(r"^([A-Za-z0-9_.$()/-]+):(?!=)", text, re.M):
        name = m.group(1)
        if name.startswith((".", "$")) and name != ".PHONY":
            continue  # file targets: .apt-installed, $(VENV)/.installed
        names.add(name)
    names.discard(".PHONY")
    return names


def phony() -> set[str]:
    return {n for line in re.findall(r"^\.PHONY:(.*)$", MAKEFILE.read_text(), re.M)
            for n in line.split()}  # fmt: skip


def test_phony_is_complete_and_has_no_phantoms() -> None:
    assert phony() == rule_targets()


def test_help_without_a_terminal_has_no_colour_and_documents_the_variables() -> None:
    out = make("help")
    assert "\x1b[" not in out
    for var in ("SET=", "ARGS=", "DEVICE=", "SITE="):
        assert var in out
    listed = set(re.findall(r"^  ([a-z0-9-]+) ", out, re.M))
    documented = set(re.findall(r"^([a-z0-9-]+):.*##", MAKEFILE.read_text(), re.M))
    assert listed >= documented


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1)")
def test_help_on_a_terminal_is_coloured_unless_no_color() -> None:
    assert "\x1b[36m" in make("help", tty=True)
    assert "\x1b[" not in make("help", tty=True, env={"NO_COLOR": "1"})


@pytest.mark.parametrize("target", ["profiles", "devices", "help"])
def test_read_only_targets_do_not_check_apt(target: str, tmp_path: Path) -> None:
    plan = make("-n", target, f"VENV={tmp_path / 'venv'}")
    assert "dpkg-query" not in plan and "apt-get" not in plan
