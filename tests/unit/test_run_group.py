"""A child that starts programs of its own (Packer: a wrapper, the real Packer, a plugin,
QEMU) is ended with everything it started: ``spawn(..., session=True)`` and
``packer._stream``.

The stand-in Packer below is shaped like packer 1.6.6 (UPSTREAM.md, Packer): an outer
process that ignores SIGINT and waits for an inner one; the inner one, on SIGINT, stops
the "VM" it started (here a ``sleep``) and exits, as Packer's cancelled build does.
Before the fix a timed-out build sent SIGINT to the outer process alone (ignored), then
killed it: the inner process and its VM were left running.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.run import PIPE, spawn
from builder.targets import packer

pytestmark = pytest.mark.allow_subprocess

PY = sys.executable
WAIT = 300.0  # seconds: only a broken test waits this long for a condition

# inner "packer": starts the "VM", says where everything is, and on SIGINT stops the VM
INNER = """
import os, signal, subprocess, sys, pathlib
out = pathlib.Path(sys.argv[1])
vm = subprocess.Popen(["sleep", "300"])
def cancel(*_):
    (out.parent / "cancelled").touch()
    vm.terminate(); vm.wait(); sys.exit(1)
signal.signal(signal.SIGINT, cancel)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
tmp = out.with_suffix(".tmp")
tmp.write_text(f"{os.getppid()} {os.getpid()} {vm.pid}\\n")
tmp.rename(out)
signal.pause()
"""
# outer "packer" (panicwrap's parent): ignores SIGINT, waits for the inner one
OUTER = f"""
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGINT}})
sys.exit(subprocess.call([sys.executable, "-c", {INNER!r}, sys.argv[1]]))
"""
# a "packer" that fails and leaves its VM behind (a crashed plugin's QEMU)
LEAVES_VM = """
import os, subprocess, sys, pathlib
vm = subprocess.Popen(["sleep", "300"])
pathlib.Path(sys.argv[1]).write_text(f"{os.getpid()} {vm.pid}\\n")
sys.exit(1)
"""


@contextmanager
def sigint_held() -> Iterator[None]:
    """Children started in the block start with SIGINT blocked (the mask is inherited):
    a SIGINT sent before one has set its handler waits for it instead of racing it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def alive(pid: int) -> bool:
    """Running (a zombie is not: its parent just has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def still_running(pids: list[int], grace: float = 60.0) -> list[int]:
    """The ``pids`` still running after ``grace`` seconds (a SIGKILLed process is gone
    within milliseconds, once the kernel schedules it; the grace is for a loaded machine)."""
    pause = threading.Event()
    for _ in range(int(grace / 0.05)):
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        pause.wait(0.05)
    return [pid for pid in pids if alive(pid)]


def wait_for_file(path: Path) -> list[int]:
    done = threading.Event()
    for _ in range(int(WAIT / 0.05)):
        if path.exists():
            return [int(p) for p in path.read_text().split()]
        done.wait(0.05)
    raise AssertionError(f"{path} never appeared")


@contextmanager
def no_orphans(pids: list[int]) -> Iterator[None]:
    """Kill what the test's processes left running (on the old code), after the test."""
    try:
        yield
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_spawn_session_ends_the_whole_group_with_the_stop_signal(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    pids: list[int] = []
    with no_orphans(pids):
        with sigint_held():
            cm = spawn(
                [PY, "-c", OUTER, str(pids_file)],
                session=True,
                stop_signal=signal.SIGINT,
                stop_timeout=WAIT,
                stdout=PIPE,
            )
            with cm as proc:
                pids += wait_for_file(pids_file)
                assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)  # its own group
        assert proc.returncode == 1  # the inner one cancelled and exited: no SIGKILL needed
        assert (tmp_path / "cancelled").exists()
        assert not still_running(pids)


def test_packer_timeout_interrupts_packer_and_leaves_no_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids_file = tmp_path / "pids"
    pids: list[int] = []
    monkeypatch.setattr(packer, "PACKER_STOP_SECONDS", 60)
    real_spawn = packer.spawn

    @contextmanager
    def spawn_timing_out_when_ready(argv, **kw):  # type: ignore[no-untyped-def]
        """The build's wait times out once the stand-in is up, not after a guessed time."""
        with real_spawn(argv, **kw) as proc:
            real_wait = proc.wait

            def wait(timeout: float | None = None) -> int:
                if timeout == 3600:  # the build's own wait
                    pids.extend(wait_for_file(pids_file))
                    raise packer.TimeoutExpired(argv, timeout)
                return real_wait(timeout)  # type: ignore[no-any-return]

            proc.wait = wait
            yield proc

    monkeypatch.setattr(packer, "spawn", spawn_timing_out_when_ready)
    with no_orphans(pids), sigint_held():
        with pytest.raises(BuilderError, match="timed out after 3600 s"):
            packer._stream([PY, "-c", OUTER, str(pids_file)], timeout=3600)
        assert (tmp_path / "cancelled").exists()  # Packer was interrupted, not just killed
        assert not still_running(pids)


def test_packer_failing_leaves_no_vm_behind(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    pids: list[int] = []
    with no_orphans(pids):
        try:
            with pytest.raises(BuilderError, match=r"packer build failed \(exit 1\)"):
                packer._stream([PY, "-c", LEAVES_VM, str(pids_file)], timeout=WAIT)
        finally:
            pids += wait_for_file(pids_file)
        assert not still_running(pids)
