"""The guests of a `builder boot-test` subprocess, counted one by one (tests only).

A `builder boot-test` run boots its guests in phases: ``--iso`` installs in one guest, then
boots the nodes side by side; a two-node run with a reboot boots the first node again alone.
Holding the most it boots at once for its whole run (``guestslots.guests_of``) left one of
the lane's two cores idle in its one-guest phases (the ``--iso`` install: 125 s, the reboot:
53 s, boot lane of 2026-11-30). The gate puts a TEST-ONLY ``qemu-system-x86_64`` first on
the command's PATH (the harness starts QEMU by that name): before it becomes the real QEMU
(exec, same PID) it asks this process for a slot (an empty file ``want-PID`` in the gate's
directory) and waits for ``go-PID``. The gate holds as many of ``GUESTS`` as the command's
guests that run or wait, and never fewer than one until the command ends:

- it starts with ``start`` (the guests the command starts side by side at once: a pair of
  nodes that must see each other starts together);
- a want beyond what it holds takes the difference (one request, served before the lane's
  other waiters: what it holds is idle until then — the ``--iso`` run's slot sat idle for
  170 s after the install while two single boots queued earlier ran, 2026-11-30 lane);
- when a guest ends, what the guests left (running or waiting) do not need goes back.

So no guest of the command runs without a slot of its own, and the cap stays honest.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.guestslots import GUESTS, GuestSlots

QEMU = "qemu-system-x86_64"
POLL = 0.2

_SHIM = """#!{python}
# TEST-ONLY stand-in qemu-system-x86_64 (tests/support/guestgate.py): waits for a slot of the
# boot lane's guests, then becomes the real QEMU.
import os, sys, time
d = os.environ["NF_GUEST_GATE"]
pid = os.getpid()
open(os.path.join(d, "want-%d" % pid), "w").close()
while not os.path.exists(os.path.join(d, "go-%d" % pid)):
    time.sleep(0.1)
real = os.environ["NF_GUEST_GATE_QEMU"]
os.execv(real, [real] + sys.argv[1:])
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


class _Gate:
    def __init__(self, directory: Path, start: int, slots: GuestSlots) -> None:
        self.dir = directory
        self.slots = slots
        self.held = slots.acquire(start)
        self.running: set[int] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _wants(self) -> list[int]:
        return sorted(int(p.name[5:]) for p in self.dir.glob("want-*"))

    def step(self) -> None:
        alive = {p for p in self.running if _alive(p)}
        ended, self.running = self.running - alive, alive
        wants = self._wants()
        need = max(1, len(self.running) + len(wants))
        if need > self.held:
            self.held += self.slots.acquire(need - self.held, first=True)
        elif ended and need < self.held:  # only what ended is given back, never the start
            self.slots.release(self.held - need)
            self.held = need
        for pid in wants:
            (self.dir / f"go-{pid}").touch()
            (self.dir / f"want-{pid}").unlink()
            self.running.add(pid)

    def loop(self) -> None:
        try:
            while not self.stop.wait(POLL):
                self.step()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
        finally:
            self.slots.release(self.held)
            self.held = 0


@contextmanager
def gate(
    workdir: Path, start: int, slots: GuestSlots = GUESTS, real: str | None = None
) -> Iterator[dict[str, str]]:
    """Hold ``start`` of ``slots`` (blocking), then yield the environment for a
    `builder boot-test` subprocess whose QEMUs each wait for a slot of their own and then
    become ``real`` (default: the QEMU on PATH)."""
    real = real or shutil.which(QEMU)
    if real is None:
        raise FileNotFoundError(QEMU)
    directory = workdir / "guest-gate"
    (directory / "bin").mkdir(parents=True, exist_ok=True)
    shim = directory / "bin" / QEMU
    shim.write_text(_SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    g = _Gate(directory, start, slots)
    thread = threading.Thread(target=g.loop, name=f"gate-{workdir.name}", daemon=True)
    thread.start()
    env = {
        **os.environ,
        "PATH": f"{directory / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "NF_GUEST_GATE": str(directory),
        "NF_GUEST_GATE_QEMU": real,
    }
    try:
        yield env
    finally:
        g.stop.set()
        thread.join()
    if g.error is not None:
        raise g.error
