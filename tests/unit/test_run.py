"""run.spawn() / run.stop(): the child's whole life, with real short-lived processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.run import PIPE, popen, spawn, stop
from builder.targets import packer

pytestmark = pytest.mark.allow_subprocess

PY = sys.executable


def _child(body: str) -> list[str]:
    """A Python child that prints ``ready`` once its signal handlers are in place."""
    return [PY, "-c", "import signal, sys, time\n" + body + "\nprint('ready', flush=True)\n"
            "time.sleep(60)\n"]  # fmt: skip


IGNORES_TERM = _child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
EXITS_7_ON_TERM = _child("signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))")
PLAIN = _child("")


def _ready(proc) -> None:  # type: ignore[no-untyped-def]
    assert proc.stdout.readline() == b"ready\n"


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
    t0 = time.monotonic()
    rc = stop(proc, 0.5)
    assert rc == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 10
    assert _reaped(proc.pid)
    proc.stdout.close()  # type: ignore[union-attr]


def test_stop_lets_a_child_exit_on_its_own_terms() -> None:
    proc = popen(EXITS_7_ON_TERM, stdout=PIPE)
    _ready(proc)
    assert stop(proc, 10) == 7
    assert _reaped(proc.pid)
    proc.stdout.close()  # type: ignore[union-attr]


def test_stop_without_a_signal_waits_then_kills() -> None:
    proc = popen([PY, "-c", "import time; time.sleep(0.2)"])
    assert stop(proc, 10, sig=None) == 0  # not signalled: it finished by itself
    proc = popen(PLAIN, stdout=PIPE)
    _ready(proc)
    assert stop(proc, 0.3, sig=None) == -signal.SIGKILL
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
    t0 = time.monotonic()
    with spawn(IGNORES_TERM, stdout=PIPE, stop_timeout=0.5) as proc:
        _ready(proc)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert _reaped(proc.pid)


def test_spawn_leaves_a_finished_child_alone() -> None:
    with spawn([PY, "-c", "raise SystemExit(5)"]) as proc:
        assert proc.wait(timeout=30) == 5
    assert proc.returncode == 5
    assert _reaped(proc.pid)


def test_spawn_reports_a_missing_program() -> None:
    with pytest.raises(BuilderError, match="needs no-such-program-x"), spawn(["no-such-program-x"]):
        pass


def test_packer_timeout_interrupts_then_kills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timed-out `packer build` gets SIGINT (to clean up), then SIGKILL if it lingers."""
    marker = tmp_path / "got-sigint"
    body = (
        "import signal, time, pathlib\n"
        f"signal.signal(signal.SIGINT, lambda *a: pathlib.Path({str(marker)!r}).touch())\n"
        "time.sleep(60)\ntime.sleep(60)\n"
    )
    monkeypatch.setattr(packer, "PACKER_STOP_SECONDS", 0.5)
    t0 = time.monotonic()
    with pytest.raises(BuilderError, match="timed out after 3 s"):
        packer._stream([PY, "-c", body], timeout=3)  # time to set the handler
    assert time.monotonic() - t0 < 10
    assert marker.exists()


@pytest.mark.allow_subprocess
def test_sigterm_still_stops_spawned_children(tmp_path):
    """A SIGTERM to the builder unwinds through spawn(): its child is stopped, not orphaned
    (Python's default SIGTERM skips every finally)."""
    import os
    import signal as sig
    import subprocess
    import sys
    import time

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
    assert py.wait(timeout=30) == 128 + sig.SIGTERM
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, sig.SIGKILL)
        raise AssertionError("the spawned child outlived the SIGTERMed builder")
