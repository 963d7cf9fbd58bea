"""Unit lane: no external programs. Starting one fails the test unless it opts in with
``@pytest.mark.allow_subprocess`` (the habit cloud-init's test suite keeps)."""

from __future__ import annotations

import subprocess

import pytest

from builder import buildinfo


class SubprocessBlocked(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("allow_subprocess"):
        return
    real_init = subprocess.Popen.__init__

    def blocked(self: subprocess.Popen, args: object, *a: object, **k: object) -> None:
        raise SubprocessBlocked(f"unit tests may not run programs: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", blocked)
    # facts render() would ask git for
    monkeypatch.setattr(buildinfo, "builder_commit", lambda: "unittest")
    monkeypatch.setattr(buildinfo, "_commit_time", lambda: None)
    del real_init
