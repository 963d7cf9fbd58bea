"""Shared fixtures: a private copy of the shipped profiles and a clean working directory."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests (issue 18 finding 8): in CI (CI=true) every run draws the same examples,
# so a red build is reproducible and a green one is not luck; locally each run draws new
# ones and saves what fails in .hypothesis/. A failure found either way is kept in the test
# as an explicit @example. HYPOTHESIS_PROFILE=ci|dev picks one by hand.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE")
    or ("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")
)

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp working directory with a copy of profiles/ in it (messages use relative paths)."""
    shutil.copytree(PROFILES, tmp_path / "profiles")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BUILDER_PROFILES", raising=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    return tmp_path


@pytest.fixture
def shipped_sites() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml") if p.stem != "base")


# -- the boot lane's wall time, for CI logs (issue 12: "the boot lane stays under 15 min") --
BOOT_LANE = REPO / "tests" / "boot"
_boot_lane: dict[str, float] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    if not Path(item.path).is_relative_to(BOOT_LANE):
        return (yield)
    _boot_lane.setdefault("start", time.monotonic())
    try:
        return (yield)
    finally:
        _boot_lane["end"] = time.monotonic()
        _boot_lane["tests"] = _boot_lane.get("tests", 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: "boot lane: N tests in X s (...)", from its first test's start to its last
    test's end, with the load average then and the most guests that ran at once."""
    if "end" not in _boot_lane:
        return
    from tests.support.guestslots import GUESTS

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    wall = _boot_lane["end"] - _boot_lane["start"]
    terminalreporter.write_line(
        f"boot lane: {int(_boot_lane['tests'])} tests in {wall:.0f} s (load average at its "
        f"end {load}; at most {GUESTS.peak} of {GUESTS.capacity} guests at once)"
    )
