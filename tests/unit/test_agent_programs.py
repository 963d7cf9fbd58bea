"""A node image without `wg`/`wg-quick` is broken for good: the agent says so and stops.

The agent runs as systemd runs it (``python3 agent.py --config …``, real subprocesses, a
PATH that lacks the program). Before the fix it took the missing program for a temporary
failure (exit 75) and systemd restarted it every 20 s forever; the failover loop waited
for the interface forever.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.hub.pki import make_ca_and_server

pytestmark = pytest.mark.allow_subprocess

AGENT = Path(__file__).resolve().parents[2] / "builder" / "node" / "agent.py"
NODE_KEY = "P" * 43 + "="
EXIT_NOTINSTALLED = 5  # systemd's NOTINSTALLED (src/basic/exit-status.c, UPSTREAM.md)

# a stand-in `wg` (named as such): the subcommands the agent runs before `wg-quick up`
STANDIN_WG = f"""#!/bin/sh
case "$1" in
  genkey) echo '{NODE_KEY}' ;;
  pubkey) cat >/dev/null; echo '{"Q" * 43}=' ;;
  *) echo "stand-in wg: $*" >&2; exit 1 ;;
esac
"""


def node(tmp_path: Path, **over: object) -> Path:
    ca_pem, _, _, _ = make_ca_and_server(["hub.example"])
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "token").write_text("nf1.token\n")
    (tmp_path / "console").write_text("")
    cfg = {
        "site": "lab",
        # loopback, nothing listening: the old code's enrollment fails there at once
        "enroll_url": "https://127.0.0.1:9",
        "ca_file": str(tmp_path / "ca.pem"),
        "token_file": str(tmp_path / "token"),
        "state_dir": str(tmp_path / "state"),
        "wireguard_dir": str(tmp_path / "wg"),
        "run_dir": str(tmp_path / "run"),
        "sys_dir": str(tmp_path / "sys"),
        "console_file": str(tmp_path / "console"),
        "enroll_attempts": 1,
        "http_timeout": 5,
        **over,
    }
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg))
    return path


def run_agent(
    tmp_path: Path, config: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    return subprocess.run(
        [sys.executable, str(AGENT), "--config", str(config), *args],
        env={"PATH": str(bin_dir), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("missing", ["wg", "wg-quick"])
def test_a_missing_wireguard_program_stops_with_its_own_status(
    tmp_path: Path, missing: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the other program is there (a stand-in; `wg-quick up` is never reached)
    present = "wg-quick" if missing == "wg" else "wg"
    (bin_dir / present).write_text(STANDIN_WG if present == "wg" else "#!/bin/sh\nexit 1\n")
    (bin_dir / present).chmod(0o755)
    proc = run_agent(tmp_path, node(tmp_path))
    assert proc.returncode == EXIT_NOTINSTALLED, proc.stderr
    journal = proc.stderr.splitlines()
    [failed] = [ln for ln in journal if ln.startswith("nodeforge-enroll: step=failed ")]
    assert f"{missing} not installed" in failed and "wireguard-tools" in failed
    assert "not retrying" in failed
    console = (tmp_path / "console").read_bytes().decode()
    assert console.startswith("\r\nnodeforge-enroll: FAILED, not retrying: ")
    assert f"{missing} not installed" in console
    # found before the one-time token was spent: nothing enrolled, the token still there
    assert not any("step=enroll" in ln for ln in journal)
    assert (tmp_path / "token").read_text() == "nf1.token\n"


def test_failover_without_wg_stops_instead_of_waiting_forever(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    config = node(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    hub = {"pubkey": "H" * 43 + "=", "endpoint": "127.0.0.1:51820", "overlay_ip": "10.100.0.1"}
    other = {**hub, "pubkey": "I" * 43 + "=", "overlay_ip": "10.100.0.2"}
    enr = {
        "address": "10.100.0.7",
        "overlay_cidr": "10.100.0.0/16",
        "hub": hub,
        "other_hubs": [other],
        "node_secret": "nfs1.secret",
        "join_url": "https://10.100.0.1:8443/v1/join",
    }
    (state / "enrollment.json").write_text(json.dumps(enr))
    try:
        proc = run_agent(tmp_path, config, "--failover", "--interval", "0.2", timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the failover loop waited for an interface that `wg` cannot show")
    assert proc.returncode == EXIT_NOTINSTALLED, proc.stderr
    assert "wg not installed" in proc.stderr
    assert "wg not installed" in (tmp_path / "console").read_text()
