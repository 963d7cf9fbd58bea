"""run.spawn() / run.stop(): the child's whole life, with real short-lived processes.

No wall-clock upper bounds (a loaded machine stretches them): a child that ignores its
signal lives for CHILD_LIFETIME seconds, so "killed, not waited out" is its exit status
(-SIGKILL, never the 0 of a natural end), and "after the grace time, not later" is the
timeout each wait was given (``record_waits``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.run import PIPE, popen, spawn, stop
from builder.targets import packer

pytestmark = pytest.mark.allow_subprocess

PY = sys.executable


CHILD_LIFETIME = 120  # seconds a child below lives unless it is ended
HANG = 600.0  # seconds: a grace time or wait that only a hung child uses up


def _child(body: str) -> list[str]:
    """A Python child that prints ``ready`` once its signal handlers are in place."""
    return [PY, "-c", "import signal, sys, time\n" + body + "\nprint('ready', flush=True)\n"
            f"time.sleep({CHILD_LIFETIME})\n"]  # fmt: skip


IGNORES_TERM = _child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
EXITS_7_ON_TERM = _child("signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))")
PLAIN = _child("")


def _ready(proc) -> None:  # type: ignore[no-untyped-def]
    assert proc.stdout.readline() == b"ready\n"


def record_waits(proc) -> list[float | None]:  # type: ignore[no-untyped-def]
    """The ``timeout`` of every ``proc.wait()`` from now on."""
    waits: list[float | None] = []
    real_wait = proc.wait

    def wait(timeout: float | None = None) -> int:
        waits.append(timeout)
        return real_wait(timeout)  # type: ignore[no-any-return]

    proc.wait = wait
    return waits


def _reaped(pid: int) -> bool:
    """True when ``pid`` is neither running nor a zombie child of ours."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return False


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    proc = popen(IGNORES_TERM, stdout=PIPE)
    _ready(proc)
    waits = record_waits(proc)
    t0 = time.monotonic()
    rc = stop(proc, 0.5)
    assert rc == -signal.SIGKILL  # killed, not waited out
    assert time.monotonic() - t0 >= 0.5  # after its grace time...
    assert waits == [0.5, None]  # ...of 0.5 s, then reaped
    assert _reaped(proc.pid)
    proc.stdout.close()  # type: ignore[union-attr]


def test_stop_lets_a_child_exit_on_its_own_terms() -> None:
    proc = popen(EXITS_7_ON_TERM, stdout=PIPE)
    _ready(proc)
    assert stop(proc, HANG) == 7  # its handler's exit, however slowly Python gets there
    assert _reaped(proc.pid)
    proc.stdout.close()  # type: ignore[union-attr]


def test_stop_without_a_signal_waits_then_kills() -> None:
    # a child that ends when its stdin does: told to go otherwise than by a signal
    proc = popen([PY, "-c", "import sys; sys.stdin.read()"], stdin=PIPE)
    proc.stdin.close()  # type: ignore[union-attr]
    assert stop(proc, CHILD_LIFETIME, sig=None) == 0  # not signalled: it finished by itself
    proc = popen(PLAIN, stdout=PIPE)
    _ready(proc)
    waits = record_waits(proc)
    assert stop(proc, 0.3, sig=None) == -signal.SIGKILL
    assert waits == [0.3, None]
    proc.stdout.close()  # type: ignore[union-attr]


def test_stop_of_an_exited_child_returns_its_status() -> None:
    proc = popen([PY, "-c", "raise SystemExit(3)"])
    proc.wait()
    assert stop(proc) == 3


def test_spawn_terminates_the_child_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), spawn(PLAIN, stdout=PIPE) as proc:
        _ready(proc)
        raise RuntimeError("boom")
    assert proc.returncode == -signal.SIGTERM
    assert _reaped(proc.pid)
    assert proc.stdout is not None and proc.stdout.closed


def test_spawn_terminates_on_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt), spawn(PLAIN, stdout=PIPE) as proc:
        _ready(proc)
        raise KeyboardInterrupt
    assert proc.returncode == -signal.SIGTERM
    assert _reaped(proc.pid)


def test_spawn_kills_a_child_that_ignores_its_stop_signal() -> None:
    with spawn(IGNORES_TERM, stdout=PIPE, stop_timeout=0.5) as proc:
        _ready(proc)
        waits = record_waits(proc)
    assert proc.returncode == -signal.SIGKILL  # killed, not waited out
    assert waits == [0.5, None]
    assert _reaped(proc.pid)


def test_spawn_leaves_a_finished_child_alone() -> None:
    with spawn([PY, "-c", "raise SystemExit(5)"]) as proc:
        assert proc.wait(timeout=HANG) == 5
    assert proc.returncode == 5
    assert _reaped(proc.pid)


def test_spawn_reports_a_missing_program() -> None:
    with pytest.raises(BuilderError, match="needs no-such-program-x"), spawn(["no-such-program-x"]):
        pass


@contextmanager
def sigint_held() -> Iterator[None]:
    """Children started in the block start with SIGINT blocked (the mask is inherited): a
    SIGINT sent before such a child has set its handler waits for it, instead of racing
    its start-up (a loaded machine can take seconds to start Python)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_packer_timeout_interrupts_packer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timed-out `packer build` gets SIGINT, to clean up and exit by itself."""
    marker = tmp_path / "got-sigint"
    body = (
        "import signal, sys, time, pathlib\n"
        "def cancel(*a):\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    sys.exit(1)\n"
        "signal.signal(signal.SIGINT, cancel)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
        f"time.sleep({CHILD_LIFETIME})\n"
    )
    # the grace time is never used up: the child exits on SIGINT, however late it starts
    monkeypatch.setattr(packer, "PACKER_STOP_SECONDS", 10 * CHILD_LIFETIME)
    t0 = time.monotonic()
    with sigint_held(), pytest.raises(BuilderError, match="timed out after 0.2 s"):
        packer._stream([PY, "-c", body], timeout=0.2)
    assert marker.exists()
    assert time.monotonic() - t0 < CHILD_LIFETIME  # ended by the SIGINT, not its own end


def test_packer_timeout_kills_a_packer_that_lingers(monkeypatch: pytest.MonkeyPatch) -> None:
    """...and SIGKILL when it is still there after PACKER_STOP_SECONDS."""
    body = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
        f"time.sleep({CHILD_LIFETIME})\n"
    )
    monkeypatch.setattr(packer, "PACKER_STOP_SECONDS", 0.5)
    t0 = time.monotonic()
    with sigint_held(), pytest.raises(BuilderError, match="timed out after 0.2 s"):
        packer._stream([PY, "-c", body], timeout=0.2)
    assert time.monotonic() - t0 < CHILD_LIFETIME  # killed, not waited out


@pytest.mark.allow_subprocess
def test_sigterm_still_stops_spawned_children(tmp_path):
    """A SIGTERM to the builder unwinds through spawn(): its child is stopped, not orphaned
    (Python's default SIGTERM skips every finally)."""
    import os
    import signal as sig
    import subprocess
    import sys

    prog = (
        "import sys, time\n"
        "from builder.run import exit_on_sigterm, spawn\n"
        "exit_on_sigterm()\n"
        "with spawn(['sleep', '300']) as p:\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    py = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True)
    child = int(py.stdout.readline())
    py.send_signal(sig.SIGTERM)
    assert py.wait(timeout=300) == 128 + sig.SIGTERM  # the default SIGTERM death is -15
    # spawn() reaped its child before the builder could exit: it is gone now, not later
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        pass
    else:
        os.kill(child, sig.SIGKILL)
        raise AssertionError("the spawned child outlived the SIGTERMed builder")
