"""The agent's systemctl shim must be runnable where the node really puts it.

Ubuntu/Debian boot through initramfs-tools, whose init mounts ``/run`` as
``tmpfs -o nodev,noexec,nosuid`` and moves that mount onto the real root (UPSTREAM.md,
"initramfs-tools /run"). A shim under ``/run`` is skipped by kubeadm's PATH lookup (and
cannot be executed), so kubeadm's ``systemctl restart kubelet`` went to the real systemctl
and waited behind our unit's ``Before=kubelet.service`` forever. Found by the stricter
stand-in kubeadm in the boot test (issue 18 finding 4): the join timed out three times.

Here: a private mount namespace with a noexec tmpfs at the agent's run_dir, as on the
node; the agent's kubeadm_env() must give a PATH whose ``systemctl`` is the shim.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "builder" / "node" / "agent.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespace)")

PROBE = """
import importlib.util, os, shutil, sys
spec = importlib.util.spec_from_file_location("agent", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
sys.modules["agent"] = agent
spec.loader.exec_module(agent)
cfg = agent.Config(site="s", enroll_url="u", ca_file="c", token_file="t",
                   run_dir=sys.argv[2], state_dir=sys.argv[3])
env = agent.Agent(cfg).kubeadm_env()
print(shutil.which("systemctl", path=env["PATH"]))
"""


def test_the_shim_is_found_first_with_run_mounted_noexec(tmp_path: Path) -> None:
    run_dir, state_dir = tmp_path / "run", tmp_path / "state"
    run_dir.mkdir()
    state_dir.mkdir(mode=0o700)
    script = (
        'mount -t tmpfs -o nodev,noexec,nosuid,mode=0755 tmpfs "$1" && '
        'INVOCATION_ID=test exec "$2" -c "$3" "$4" "$1/nodeforge" "$5"'
    )
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(run_dir), sys.executable, PROBE, str(AGENT), str(state_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    found = r.stdout.strip()
    assert found and found != "/usr/bin/systemctl" and found.endswith("/shim/systemctl"), found
    assert Path(found).is_relative_to(state_dir), found
