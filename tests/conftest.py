"""Shared fixtures: a private copy of the shipped profiles and a clean working directory."""

from __future__ import annotations

import os
import shutil
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
