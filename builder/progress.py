"""The one progress reporter for long work (downloads, hashing, flash write and verify,
the ISO remaster, a boot).

``Progress(label, total)`` writes to stderr (stdout carries results only):

- on a terminal, one line redrawn in place at most 5 times a second and ended with a
  newline by ``close()``;
- otherwise (a log, a pipe, CI), a plain line at every tenth of the total and at least
  every ``interval`` seconds (5) while work goes on, plus a last one at ``close()`` when
  the end was not shown yet, so logs stay short;
- nothing at all when quiet: ``builder -q`` calls ``set_quiet(True)``.

A line reads ``label [#######-----]  42%  1.2 GiB / 2.8 GiB  35.2 MiB/s  ETA 0:47``
(without a known total: ``label  1.2 GiB  35.2 MiB/s``). Work measured in time (a boot
waiting for its node, ``unit="s"``) reads ``label [###------]  12%  0:42 / 6:00``.

Work done by another program is shown with ``watch_file`` (a file it writes, e.g. the
remastered ISO xorriso writes) or ``ticker`` (elapsed time against a timeout, e.g. a boot).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Protocol

INTERVAL = 5.0  # seconds between plain lines when stderr is not a terminal
REDRAW = 0.2  # seconds between redraws on a terminal
BAR = 24

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) every progress display; the CLI sets it from ``-q``."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class ProgressLike(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


class Progress:
    """Progress of ``total`` bytes (``None``: unknown), ``start`` of them already done."""

    def __init__(
        self,
        label: str,
        total: int | None,
        stream: IO[str] | None = None,
        *,
        start: int = 0,
        quiet: bool | None = None,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "B",
    ) -> None:
        self.label = label
        self.unit = unit  # "B": bytes, "s": seconds
        self.total = total
        self.done = self.start = start
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = is_quiet() if quiet is None else quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.clock = clock
        self.t0 = clock()
        self._last = -math.inf  # the first update shows a line
        self._decile = -1  # the last tenth of the total a plain line showed
        self._shown = -1  # ``done`` as the last line showed it
        self._closed = False

    def line(self) -> str:
        if self.unit == "s":
            if not self.total:
                return f"{self.label}  {duration(self.done)}"
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * BAR)
            return (
                f"{self.label} [{bar:<{BAR}}] {frac * 100:3.0f}%  "
                f"{duration(self.done)} / {duration(self.total)}"
            )
        elapsed = max(self.clock() - self.t0, 1e-6)
        rate = (self.done - self.start) / elapsed
        speed = f"{human_size(int(rate))}/s"
        if not self.total:
            return f"{self.label}  {human_size(self.done)}  {speed}"
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * BAR)
        eta = duration((self.total - self.done) / rate) if rate > 0 else "?"
        return (
            f"{self.label} [{bar:<{BAR}}] {frac * 100:3.0f}%  {human_size(self.done)} / "
            f"{human_size(self.total)}  {speed}  ETA {eta}"
        )

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(self, n: int) -> None:
        self.done += n
        if self.quiet:
            return
        now = self.clock()
        if self.tty:
            if now - self._last >= REDRAW:
                self._last = now
                self._write("\r" + self.line() + "\x1b[K")
            return
        decile = min(self.done * 10 // self.total, 10) if self.total else -1
        if decile > self._decile or now - self._last >= self.interval:
            self._decile = max(decile, self._decile)
            self._last = now
            self._shown = self.done
            self._write(self.line() + "\n")

    def close(self) -> None:
        """End the display: the final state, unless a plain line already showed it."""
        if self._closed or self.quiet:
            return
        self._closed = True
        if self.tty:
            self._write("\r" + self.line() + "\x1b[K\n")
        elif self._shown != self.done:
            self._write(self.line() + "\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoProgress:
    """Shows nothing (tests, callers that report otherwise)."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def stderr_progress(label: str, total: int) -> ProgressLike:
    """A ``Progress`` on stderr: the default factory for callers that take one."""
    return Progress(label, total)


@contextlib.contextmanager
def watch_file(
    path: str | os.PathLike[str],
    total: int | None,
    label: str,
    *,
    poll: float = 0.5,
    stream: IO[str] | None = None,
) -> Iterator[Progress]:
    """Show the growth of ``path`` (written by another program) while the block runs."""
    prog = Progress(label, total, stream)
    stop = threading.Event()
    lock = threading.Lock()  # the poller and the last look at the end: one at a time

    def size() -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return 0

    def look() -> None:
        with lock:
            grown = size() - prog.done
            if grown > 0:
                prog.update(grown)

    def run() -> None:
        while not stop.wait(poll):
            look()

    thread = threading.Thread(target=run, name=f"progress {label}", daemon=True)
    thread.start()
    try:
        yield prog
        look()
    finally:
        stop.set()
        thread.join()
        prog.close()


@contextlib.contextmanager
def ticker(
    label: str,
    timeout: float | None,
    *,
    poll: float = 1.0,
    stream: IO[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress]:
    """Show elapsed time (against ``timeout``) while the block waits on something else."""
    total = int(timeout) if timeout else None
    prog = Progress(label, total, stream, unit="s")
    stop = threading.Event()
    lock = threading.Lock()  # the ticking thread and the last tick at the end: one at a time
    t0 = clock()

    def tick() -> None:
        with lock:
            elapsed = int(clock() - t0)
            if elapsed > prog.done:
                prog.update(elapsed - prog.done)

    def run() -> None:
        while not stop.wait(poll):
            tick()

    thread = threading.Thread(target=run, name=f"progress {label}", daemon=True)
    thread.start()
    try:
        yield prog
        tick()
    finally:
        stop.set()
        thread.join()
        prog.close()
