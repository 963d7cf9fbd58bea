"""Issue 15 item 12: the one progress reporter also shows the remaster and a boot.

``watch_file`` follows a file another program writes (xorriso's remastered ISO),
``ticker`` elapsed time against a timeout (a boot waiting for its node); both through
``Progress``: plain lines off a terminal, redrawn on one, nothing with ``-q``.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import threading
from pathlib import Path

import pytest

from builder import cli, progress

WAIT = 300.0  # seconds: only a hung poller waits this long for a condition below


class Watched(io.StringIO):
    """A stream the test can wait on: ``wait_for(text)`` returns once ``text`` was written
    (the poller thread writes when it sees progress; no sleep guesses how long that takes)."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty
        self.cond = threading.Condition()

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        with self.cond:
            n = super().write(s)
            self.cond.notify_all()
        return n

    def wait_for(self, text: str) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: text in self.getvalue(), WAIT), self.getvalue()


def grow(path: Path, chunks: int, size: int, stream: Watched, *, wait_last: bool = True) -> None:
    """Append ``chunks`` chunks, each once the watcher has shown the one before (and the
    last one too, unless ``wait_last``: a terminal redraw shows it only at the end)."""
    with open(path, "ab") as fh:
        for i in range(1, chunks + 1):
            fh.write(b"x" * size)
            fh.flush()
            if i < chunks or wait_last:
                stream.wait_for(f" {progress.human_size(i * size)} / ")


def test_watch_file_reports_the_growth(tmp_path: Path) -> None:
    out = tmp_path / "new.iso"
    out.write_bytes(b"")
    stream = Watched()
    with progress.watch_file(out, 10 * 4096, "remaster new.iso", poll=0.01, stream=stream):
        grow(out, 10, 4096, stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # a line for every tenth, seen while the file grew
    assert lines[0].startswith("remaster new.iso [##  ")
    assert " 10%  4.0 KiB / 40.0 KiB" in lines[0]
    assert lines[-1].startswith("remaster new.iso [" + "#" * progress.BAR + "] 100%")
    assert "40.0 KiB / 40.0 KiB" in lines[-1]


def test_watch_file_redraws_on_a_terminal_and_is_silent_when_quiet(tmp_path: Path) -> None:
    out = tmp_path / "f"
    out.write_bytes(b"")
    tty = Watched(tty=True)
    with progress.watch_file(out, 8192, "w", poll=0.01, stream=tty):
        grow(out, 2, 4096, tty, wait_last=False)  # redrawn at most 5 times a second
    assert tty.getvalue().startswith("\r") and tty.getvalue().endswith("\x1b[K\n")
    assert "\r" + "w [" + "#" * (progress.BAR // 2) + " " in tty.getvalue()  # while it grew
    progress.set_quiet(True)
    try:
        quiet = Watched()
        with progress.watch_file(out, 8192, "w", poll=0.01, stream=quiet), open(out, "ab") as fh:
            fh.write(b"x" * 4096)
        assert quiet.getvalue() == ""
    finally:
        progress.set_quiet(False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_ticker_shows_elapsed_time_against_the_timeout() -> None:
    stream, clock = Watched(), FakeClock()
    with progress.ticker("boot aws node-1", 360, poll=0.01, stream=stream, clock=clock) as prog:
        clock.now += 42.2
        stream.wait_for("0:42 / 6:00")  # the ticking thread saw the time go by
        assert prog.done == 42
        clock.now += 30.0
    assert prog.done == 72  # the last tick, at the end of the block
    last = stream.getvalue().splitlines()[-1]
    assert last == f"boot aws node-1 [{'#' * 4:<{progress.BAR}}]  20%  1:12 / 6:00"


@pytest.fixture
def offline(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from builder.targets import iso

    shown = threading.Event()  # the watcher showed the last chunk written

    def slow_remaster(base: Path, out: Path, tree: Path, **kw: object) -> None:
        with open(base, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(64 * 1024):
                shown.clear()
                dst.write(chunk)
                dst.flush()
                assert shown.wait(WAIT), "the remaster's progress never showed a chunk"

    monkeypatch.setattr(iso, "remaster", slow_remaster)
    monkeypatch.setattr(progress, "watch_file", _fast(progress.watch_file, shown))
    base = workdir / "ubuntu.iso"
    base.write_bytes(b"u" * (8 * 64 * 1024))
    return base


def _fast(real, shown):  # type: ignore[no-untyped-def]
    """``watch_file`` polling fast, setting ``shown`` after every update it makes."""

    @contextlib.contextmanager
    def watch(path, total, label, **kw):  # type: ignore[no-untyped-def]
        with real(path, total, label, poll=0.01, **kw) as prog:
            update = prog.update

            def update_and_tell(n: int) -> None:
                update(n)
                shown.set()

            prog.update = update_and_tell
            yield prog

    return watch


def test_image_shows_the_remaster_progress(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    digest = hashlib.sha256(offline.read_bytes()).hexdigest()
    args = ["image", "onprem", "--allow-demo", "--base-iso", str(offline), "--base-sha256", digest]
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    remaster = [ln for ln in err.splitlines() if ln.startswith("remaster ")]
    assert len(remaster) >= 2 and remaster[-1].split("]")[1].strip().startswith("100%")
    with pytest.raises(SystemExit) as exc:
        cli.main(["-q", *args, "--force", "-o", "dist2"])
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    assert "remaster " not in err
    shutil.rmtree(Path("dist2"))
