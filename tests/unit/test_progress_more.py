"""Issue 15 item 12: the one progress reporter also shows the remaster and a boot.

``watch_file`` follows a file another program writes (xorriso's remastered ISO),
``ticker`` elapsed time against a timeout (a boot waiting for its node); both through
``Progress``: plain lines off a terminal, redrawn on one, nothing with ``-q``.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import pytest

from builder import cli, progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def grow(path: Path, chunks: int, size: int, pause: float) -> None:
    with open(path, "ab") as fh:
        for _ in range(chunks):
            fh.write(b"x" * size)
            fh.flush()
            time.sleep(pause)


def test_watch_file_reports_the_growth(tmp_path: Path) -> None:
    out = tmp_path / "new.iso"
    out.write_bytes(b"")
    stream = io.StringIO()
    with progress.watch_file(out, 10 * 4096, "remaster new.iso", poll=0.01, stream=stream):
        grow(out, 10, 4096, 0.02)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("remaster new.iso [")
    assert lines[-1].startswith("remaster new.iso [" + "#" * progress.BAR + "] 100%")
    assert "40.0 KiB / 40.0 KiB" in lines[-1]


def test_watch_file_redraws_on_a_terminal_and_is_silent_when_quiet(tmp_path: Path) -> None:
    out = tmp_path / "f"
    out.write_bytes(b"")
    tty = Tty()
    with progress.watch_file(out, 8192, "w", poll=0.01, stream=tty):
        grow(out, 2, 4096, 0.05)
    assert tty.getvalue().startswith("\r") and tty.getvalue().endswith("\x1b[K\n")
    progress.set_quiet(True)
    try:
        quiet = io.StringIO()
        with progress.watch_file(out, 8192, "w", poll=0.01, stream=quiet):
            grow(out, 2, 4096, 0.02)
        assert quiet.getvalue() == ""
    finally:
        progress.set_quiet(False)


def test_ticker_shows_elapsed_time_against_the_timeout() -> None:
    stream = io.StringIO()
    with progress.ticker("boot aws node-1", 360, poll=0.05, stream=stream) as prog:
        done = threading.Event()
        done.wait(1.2)
    assert prog.done >= 1
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("boot aws node-1 [")
    assert last.endswith(f"{progress.duration(prog.done)} / 6:00")


@pytest.fixture
def offline(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from builder.targets import iso

    def slow_remaster(base: Path, out: Path, tree: Path, **kw: object) -> None:
        with open(base, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(64 * 1024):
                dst.write(chunk)
                dst.flush()
                time.sleep(0.15)

    monkeypatch.setattr(iso, "remaster", slow_remaster)
    monkeypatch.setattr(progress, "watch_file", _fast(progress.watch_file))
    base = workdir / "ubuntu.iso"
    base.write_bytes(b"u" * (8 * 64 * 1024))
    return base


def _fast(real):  # type: ignore[no-untyped-def]
    def watch(path, total, label, **kw):  # type: ignore[no-untyped-def]
        return real(path, total, label, poll=0.05, **kw)

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
