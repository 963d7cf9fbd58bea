"""`make mutation` runs mutants with a private /dev (tests/mutation/sandbox.sh, issue 18).

A flasher mutant that skipped the refusals once wrote the test image to the host's
/dev/nvme0n1p3. Inside the sandbox no block device is visible and a file created under /dev
is gone with the namespace; the host's /dev is untouched.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[1] / "mutation" / "sandbox.sh"


def _sandbox(script: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NF_PRIVATE_DEV"}
    return subprocess.run(
        [str(SANDBOX), "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def usable() -> None:
    probe = _sandbox("true")
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.strip()}")


def test_no_block_device_and_writes_stay_inside(usable: None) -> None:
    name = f"nf-sandbox-{uuid.uuid4().hex[:8]}"
    out = _sandbox(
        f"echo image > /dev/{name} && cat /dev/{name} && find /dev -type b | wc -l"
        " && ls /dev && echo x > /dev/null && head -c 4 /dev/urandom | wc -c"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "image"
    assert lines[1] == "0"  # no block device node inside
    assert sorted(lines[2:-1]) == sorted(
        [name, "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin"]
        + ["stdout", "tty", "urandom", "zero"]
    )
    assert lines[-1] == "4"
    assert not Path("/dev", name).exists()  # the host's /dev never saw it


def test_a_pty_and_shared_memory_work_inside(usable: None) -> None:
    # pytest's own plumbing and the flasher's terminal tests need these
    out = _sandbox(
        "python3 -c 'import os, pty; m, s = pty.openpty(); print(os.ttyname(s))'"
        " && python3 -c 'import multiprocessing as mp; mp.Lock(); print(\"lock\")'"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["/dev/pts/0", "lock"]
