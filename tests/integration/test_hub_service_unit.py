"""README: `cp builder/hub/nodeforge-hub.service /etc/systemd/system/ && systemctl enable
--now nodeforge-hub` runs the hub (issue 18 finding 10).

The unit is checked by systemd's own parser (`systemd-analyze verify`: unknown keys and bad
values are warnings on stderr, so stderr must be empty), and what it runs goes through the real
CLI. Expected values: README.md ("Run the hub on the control-plane node": config in
/etc/nodeforge-hub, exit 70 when the writer cannot be restarted, the service is started again)
and wireguard-go's UAPI socket directory /var/run/wireguard (github.com/WireGuard/wireguard-go
ipc/uapi_unix.go at 15692aa, `var socketDirectory = "/var/run/wireguard"`, read 2026-11-30;
/var/run is a link to /run here, Debian 12).
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "builder" / "hub" / "nodeforge-hub.service"


def unit() -> dict[str, dict[str, list[str]]]:
    """[section] -> key -> values (systemd allows repeated keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault(section, {}).setdefault(k, []).append(v)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit_without_a_warning(tmp_path):
    builder = Path(sys.executable).with_name("builder")
    assert builder.exists(), "the venv's `builder` entry point (pip install -e .)"
    text = UNIT.read_text().replace("/usr/local/bin/builder", str(builder))
    (tmp_path / "nodeforge-hub.service").write_text(text)
    p = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "nodeforge-hub.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and p.stderr == "", p.stderr
    # the check can fail: a misspelt key is reported
    (tmp_path / "bad.service").write_text(text.replace("Restart=always", "Restart=sometimes"))
    p = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "bad.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Failed to parse service restart specifier" in p.stderr


def test_the_unit_runs_hub_serve_on_the_installed_config_and_restarts_it(tmp_path):
    u = unit()
    svc = u["Service"]
    argv = shlex.split(svc["ExecStart"][0])
    assert argv == [
        "/usr/local/bin/builder",
        "hub",
        "serve",
        "--config",
        "/etc/nodeforge-hub/hub.json",
    ]
    assert u["Unit"]["ConditionPathExists"] == ["/etc/nodeforge-hub/hub.json"]
    assert "NODEFORGE_HUB_CONFIG=/etc/nodeforge-hub/hub.json" in svc["Environment"]
    # the hub exits 70 when its writer cannot be restarted: only Restart=always (or
    # on-failure) starts it again
    assert svc["Restart"] == ["always"]
    # WireGuard needs CAP_NET_ADMIN; the database (hub.json's directory) and wireguard-go's
    # socket directory must stay writable under ProtectSystem=full
    assert svc["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    rw = svc["ReadWritePaths"][0].split()
    assert "/etc/nodeforge-hub" in rw and "-/run/wireguard" in rw
    assert u["Install"]["WantedBy"] == ["multi-user.target"]
    # the same argv through the real CLI: the command and option exist (a missing config is
    # bad input, exit 2 naming the file, not a usage error about the command line)
    missing = tmp_path / "etc" / "hub.json"
    p = subprocess.run(
        [sys.executable, "-c", "from builder.cli import main; main()", *argv[1:4], str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert p.returncode == 2 and str(missing) in p.stderr, p.stderr
    assert "No such option" not in p.stderr and "No such command" not in p.stderr


def test_the_install_line_in_the_readme_names_this_file():
    readme = (REPO / "README.md").read_text()
    assert "cp builder/hub/nodeforge-hub.service /etc/systemd/system/" in readme
    assert "systemctl enable --now nodeforge-hub" in readme
    configparser.ConfigParser(strict=False).read_string(UNIT.read_text())  # well-formed INI
