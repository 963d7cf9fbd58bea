"""The gate that counts a `builder boot-test` subprocess's guests one by one
(tests/support/guestgate.py), with a stand-in QEMU that only sleeps and logs its interval."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.guestgate import gate
from tests.support.guestslots import GuestSlots

FAKE_QEMU = """#!{python}
import sys, time
name, seconds, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t0 = time.time()
time.sleep(seconds)
with open(log, "a") as f:
    f.write("%s %f %f\\n" % (name, t0, time.time()))
"""

# the "command": phases of guests, each phase side by side, like boot-test's
COMMAND = """
import subprocess, sys
log = sys.argv[1]
for phase in sys.argv[2:]:
    procs = [subprocess.Popen(["qemu-system-x86_64", name, "0.8", log])
             for name in phase.split(",")]
    assert all(p.wait() == 0 for p in procs)
"""


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    """The guests' log; the stand-in QEMU is ``fakebin/qemu-system-x86_64`` beside it. Never
    put on this process's PATH: the boot lane's pool threads start the real QEMU meanwhile
    (a `bash .ci/run` of 2026-11-30 booted this stand-in in two scenarios)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    q = bindir / "qemu-system-x86_64"
    q.write_text(FAKE_QEMU.format(python=sys.executable))
    q.chmod(0o755)
    return tmp_path / "guests.log"


def _fake(log: Path) -> str:
    return str(log.parent / "fakebin" / "qemu-system-x86_64")


def _intervals(log: Path) -> dict[str, tuple[float, float]]:
    """Every guest's (start, end), a repeated name numbered (``other``, ``other2``, ...)."""
    out: dict[str, tuple[float, float]] = {}
    for line in log.read_text().splitlines():
        name, a, b = line.split()
        key, i = name, 1
        while key in out:
            i += 1
            key = f"{name}{i}"
        out[key] = (float(a), float(b))
    return out


def _max_overlap(iv: dict[str, tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in iv.values()] + [(b, -1) for _, b in iv.values()])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _other(slots: GuestSlots, log: Path, after: float, seconds: float) -> threading.Thread:
    """Another of the lane's single guests, asking for its slot ``after`` s from now."""

    def go() -> None:
        time.sleep(after)
        with slots.hold(1):
            t0 = time.time()
            time.sleep(seconds)
            with open(log, "a") as f:
                f.write(f"other {t0} {time.time()}\n")

    t = threading.Thread(target=go)
    t.start()
    return t


def _command(tmp_path: Path, slots: GuestSlots, start: int, log: Path, *phases: str) -> None:
    with gate(tmp_path / "cmd", start, slots, real=_fake(log)) as env:
        subprocess.run([sys.executable, "-c", COMMAND, str(log), *phases], env=env, check=True,
                       timeout=60)  # fmt: skip


def test_the_install_alone_leaves_the_other_slot_free(tmp_path: Path, fake_qemu: Path) -> None:
    """--iso: the install alone (one slot), then two nodes (a second slot, taken when they
    ask): another single guest runs beside the install, never three at once."""
    slots = GuestSlots(2)
    other = _other(slots, fake_qemu, 0.2, 1.6)  # still running when the nodes ask
    _command(tmp_path, slots, 1, fake_qemu, "install", "node1,node2")
    other.join(timeout=30)
    iv = _intervals(fake_qemu)
    assert set(iv) == {"install", "node1", "node2", "other"}
    assert iv["other"][0] < iv["install"][1]  # beside the install
    assert _max_overlap(iv) <= 2
    assert slots.in_use == 0 and slots.peak == 2


def test_the_nodes_go_before_single_guests_queued_earlier(tmp_path: Path, fake_qemu: Path) -> None:
    """--iso: after the install the gate holds one slot and needs a second for its two nodes;
    that slot sits idle until it gets the second, so it goes before the single guests that
    queued before it (they run after, on both cores), never three at once."""
    slots = GuestSlots(2)
    phases = ("install", "node1,node2")
    cmd = threading.Thread(target=_command, args=(tmp_path, slots, 1, fake_qemu, *phases))
    cmd.start()  # the install: 0.8 s on the gate's one slot
    beside = _other(slots, fake_qemu, 0.1, 1.6)  # the other slot, past the install's end
    queued = [_other(slots, fake_qemu, 0.4, 0.3) for _ in range(2)]  # both slots busy: wait
    for t in (cmd, beside, *queued):
        t.join(timeout=30)
    iv = _intervals(fake_qemu)
    nodes = [a for name, (a, _) in iv.items() if name.startswith("node")]
    singles = sorted(a for name, (a, _) in iv.items() if name.startswith("other"))
    assert len(nodes) == 2 and len(singles) == 3
    assert max(nodes) < singles[1]  # the two queued singles started after the nodes
    assert _max_overlap(iv) <= 2
    assert slots.in_use == 0


def test_a_reboot_alone_gives_the_second_slot_back(tmp_path: Path, fake_qemu: Path) -> None:
    """Two nodes side by side (both slots from the start), then the first again alone: the
    other single guest gets the slot the second node gave back."""
    slots = GuestSlots(2)
    other = _other(slots, fake_qemu, 0.1, 0.5)  # asks while the pair runs: must wait
    _command(tmp_path, slots, 2, fake_qemu, "node1,node2", "reboot")
    other.join(timeout=30)
    iv = _intervals(fake_qemu)
    assert iv["other"][0] >= max(iv["node1"][1], iv["node2"][1]) - 0.05  # not beside the pair
    assert iv["other"][0] < iv["reboot"][1]  # beside the reboot
    assert _max_overlap(iv) <= 2
    assert slots.in_use == 0


def test_without_the_gate_a_third_would_run(tmp_path: Path, fake_qemu: Path) -> None:
    """Control: the overlap count sees three at once when nothing gates the command."""
    slots = GuestSlots(2)
    other = _other(slots, fake_qemu, 0.0, 1.0)
    time.sleep(0.1)
    path = f"{Path(_fake(fake_qemu)).parent}:{os.environ['PATH']}"  # the command's PATH only
    subprocess.run([sys.executable, "-c", COMMAND, str(fake_qemu), "node1,node2"], check=True,
                   timeout=60, env={**os.environ, "PATH": path})  # fmt: skip
    other.join(timeout=30)
    assert _max_overlap(_intervals(fake_qemu)) == 3
