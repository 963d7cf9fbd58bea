"""`builder hub doctor` through the CLI, run inside a private network namespace that has
only its loopback: nothing the doctor probes is reachable, so every network check fails
(and no packet can leave the namespace)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BUILDER = [sys.executable, "-c", "from builder.cli import main; main()"]


@pytest.fixture
def netns() -> object:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    ns = f"nfdoc{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_doctor_cli_reports_each_failure_with_a_fix(tmp_path: Path, netns: str) -> None:
    subprocess.run([*BUILDER, "hub", "init", str(tmp_path / "hub"), "--site", "onprem"], check=True,
                   capture_output=True)  # fmt: skip
    config = tmp_path / "hub" / "hub.json"
    res = subprocess.run(
        ["ip", "netns", "exec", netns, *BUILDER, "hub", "doctor", "--config", str(config),
         "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    # the hub's interface does not exist in this namespace
    assert by_name["interface"]["ok"] is False
    assert by_name["interface"]["fix"]
    assert all(c["fix"] for c in report["checks"] if not c["ok"])
    text = subprocess.run(
        ["ip", "netns", "exec", netns, *BUILDER, "hub", "doctor", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert text.returncode == 1
    assert "FAIL interface:" in text.stdout
