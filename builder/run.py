"""The only module that starts external programs.

``run(argv)`` logs ``+ argv`` at debug level, turns a missing binary into a
``ToolMissing`` with an install hint, and a non-zero exit into ``CommandFailed``
carrying the tail of the program's output.

Long-running programs: ``with spawn(argv) as proc:`` owns the child's whole life (on
leaving the block, normally or by an exception, a child still running is signalled, waited
for, killed if it does not go, and always reaped). A child that must outlive one block
(a server started by one method, stopped by another) is started with ``popen`` and ended
with ``stop(proc, timeout)``; nothing else hand-rolls terminate/wait/kill.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import CommandFailed, ToolMissing

log = logging.getLogger("builder.run")

PIPE = subprocess.PIPE
TimeoutExpired = subprocess.TimeoutExpired

# tool -> Debian package that provides it (for hints)
PACKAGES = {
    "xorriso": "xorriso",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "packer": "packer",
    "wg": "wireguard-tools",
    "wg-quick": "wireguard-tools",
    "wireguard-go": "wireguard-go",
    "cloud-init": "cloud-init",
    "shellcheck": "shellcheck",
    "systemd-analyze": "systemd",
    "mmdebstrap": "mmdebstrap",
    "dpkg-deb": "dpkg",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "ip": "iproute2",
    "sqlite3": "sqlite3",
    "kubeadm": "kubeadm",
}


def which(tool: str) -> str | None:
    return shutil.which(tool)


def missing_message(tool: str) -> str:
    """The one message for a missing program: ``needs packer: apt-get install … packer``."""
    return f"needs {tool}: apt-get install --no-install-recommends {PACKAGES.get(tool, tool)}"


def require(tool: str, search: str | None = None) -> str:
    """Return the path of ``tool`` or raise ToolMissing with an install hint (``search``: a
    PATH to look in instead of this process's)."""
    path = shutil.which(tool, path=search)
    if path is None:
        raise ToolMissing(
            missing_message(tool),
            hint=f"{tool} not found on PATH; `make deps` installs every tool the builder uses",
        )
    return path


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; raise CommandFailed if it exits non-zero and ``check`` is set.

    With ``capture`` the output is collected (stdout and stderr separately) and
    returned; without it the program writes straight to our stderr/stdout.
    """
    args = [os.fspath(a) for a in argv]
    require(args[0])
    log.debug("+ %s", shlex.join(args))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=full_env,
            input=input,
            text=text,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(
            f"{Path(args[0]).name} timed out after {timeout:g} s", returncode=-1
        ) from exc
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")) if capture else ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        tail = "\n".join(out.strip().splitlines()[-20:])
        msg = f"{Path(args[0]).name} failed (exit {proc.returncode})"
        if tail:
            msg += ":\n" + tail
        raise CommandFailed(msg, proc.returncode, out)
    return proc


def popen(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a long-running program (QEMU, wireguard-go, the hub) and return it.

    The caller ends it with ``stop()``; prefer ``spawn()``, which does that itself.
    """
    args = [os.fspath(a) for a in argv]
    require(args[0])
    log.debug("+ %s &", shlex.join(args))
    return subprocess.Popen(args, **kwargs)  # type: ignore[call-overload,no-any-return]


def _signal(proc: subprocess.Popen[bytes], sig: int, group: bool) -> None:
    """``sig`` to ``proc``, or with ``group`` to every process of its process group (the
    child leads it: ``spawn(..., session=True)``); nothing when none is left."""
    with suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)


def stop(
    proc: subprocess.Popen[bytes],
    timeout: float = 10.0,
    *,
    sig: signal.Signals | None = signal.SIGTERM,
    group: bool = False,
) -> int:
    """End ``proc`` and reap it; return its exit status (negative: killed by a signal).

    A child still running gets ``sig`` (``None``: no signal, it was already told to go,
    e.g. by the terminal's Ctrl-C), then up to ``timeout`` seconds to exit, then SIGKILL.
    It is always waited for, so no zombie is left behind.

    ``group``: ``proc`` leads its own process group (``spawn(..., session=True)``): the
    signals go to the whole group, and whatever of the group outlives ``proc`` (a program
    it started and did not end, e.g. Packer's QEMU) is killed once ``proc`` is gone.
    """
    try:
        if proc.poll() is None:
            if sig is not None:
                _signal(proc, sig, group)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.debug("pid %d still running %g s after %s: killing it", proc.pid, timeout, sig)
            finally:  # also when the wait itself is interrupted (a second Ctrl-C)
                if proc.poll() is None:
                    _signal(proc, signal.SIGKILL, group)
                    proc.wait()
    finally:
        if group:  # the leader is reaped, its group id is not reused while members live
            _signal(proc, signal.SIGKILL, True)
    return proc.returncode


@contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stop_timeout: float = 10.0,
    stop_signal: signal.Signals = signal.SIGTERM,
    session: bool = False,
    **kwargs: object,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` (like ``popen``) for the length of a ``with`` block.

    Leaving the block ends a child still running with ``stop(proc, stop_timeout,
    sig=stop_signal)``, whether the block finished or raised; its pipes are closed.

    ``session``: the child starts a session (and process group) of its own, so that the
    programs it starts can be ended with it: leaving the block signals the whole group and
    kills what is left of it (``stop(..., group=True)``). The terminal's Ctrl-C then no
    longer reaches the child: the caller passes it on (``stop``) when it sees one.
    """
    if session:
        kwargs["start_new_session"] = True
    proc = popen(argv, **kwargs)
    try:
        yield proc
    finally:
        try:
            stop(proc, stop_timeout, sig=stop_signal, group=session)
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with suppress(OSError):
                        stream.close()


def exit_on_sigterm() -> Any:
    """Make SIGTERM (systemd, ``kill``, a CI timeout) unwind like Ctrl-C does: Python's
    default is to die at once, skipping every ``finally``, so children started with
    ``spawn()`` (QEMU, packer, a hub) and temp files would outlive us. Returns the handler
    it replaced, for the caller to put back (``cli.main`` called in-process, by a test or
    another program, must not leave its handler behind)."""

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _term)
