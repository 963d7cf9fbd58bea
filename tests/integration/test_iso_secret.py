"""An ISO that embeds the site enrollment token is a secret (issue 14, finding 4).

Real xorriso on the stand-in Ubuntu base ISO: with a site token the ISO is written 0600
and the build warns; without one it stays 0644.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from builder.site.profile import load_profile
from builder.targets.image import build_iso
from tests.support.iso_inputs import fixture_overrides
from tests.support.ubuntu_like_iso import build_fixture

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
TOKEN = "nf-site-token-iso-8d41c0"


@pytest.fixture(scope="module")
def base() -> Path:
    return build_fixture()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_iso_with_a_site_token_is_0600_and_warned_about(
    base: Path, env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (env / "tok").write_text(TOKEN + "\n")
    profile = load_profile(
        "onprem", PROFILES, fixture_overrides(base, "enrollment.site_token=file:tok")
    )
    with caplog.at_level(logging.WARNING):
        res = build_iso(profile, dist=env / "dist", build_dir=env / "build", base_iso=base)
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o600
    assert TOKEN.encode() in res.path.read_bytes()  # it really is inside
    assert any("carries the site enrollment token" in r.getMessage() for r in caplog.records)
    # a cache hit keeps it 0600
    again = build_iso(profile, dist=env / "dist", build_dir=env / "build", base_iso=base)
    assert again.cached and stat.S_IMODE(again.path.stat().st_mode) == 0o600


def test_iso_without_a_secret_stays_0644(
    base: Path, env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    profile = load_profile("onprem", PROFILES, fixture_overrides(base))
    with caplog.at_level(logging.WARNING):
        res = build_iso(profile, dist=env / "dist", build_dir=env / "build", base_iso=base)
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o644
    assert not any("enrollment token" in r.getMessage() for r in caplog.records)
