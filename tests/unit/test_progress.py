"""builder.progress: one reporter, redrawn on a terminal, plain lines otherwise, -q silent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import progress
from builder.cli import main
from builder.progress import Progress

MiB = 1 << 20


class Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def not_quiet() -> Iterator[None]:
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_plain_lines_at_every_tenth_without_a_terminal() -> None:
    out = Stream(tty=False)
    p = Progress("writing", 100 * MiB, out)  # type: ignore[arg-type]
    for _ in range(100):
        p.update(MiB)
    p.close()
    lines = out.text.splitlines()
    assert len(lines) == 11  # 0 %, every 10 %; close adds nothing: 100 % was shown
    assert "\r" not in out.text and "\x1b" not in out.text
    assert lines[0].startswith("writing [                        ]   1%  1.0 MiB / 100.0 MiB")
    assert lines[5].startswith("writing [############            ]  50%  50.0 MiB / 100.0 MiB")
    assert lines[-1].startswith("writing [########################] 100%  100.0 MiB / 100.0 MiB")


def test_plain_line_every_few_seconds_when_the_total_is_unknown() -> None:
    out, clock = Stream(tty=False), Clock()
    p = Progress("ubuntu.iso", None, out, clock=clock)  # type: ignore[arg-type]
    for _ in range(12):  # 1 MiB a second for 12 s
        clock.now += 1
        p.update(MiB)
    p.close()
    # the first update, then every 5 s (at 6 s and 11 s), then the end at close
    assert out.text.splitlines() == [
        "ubuntu.iso  1.0 MiB  1.0 MiB/s",
        "ubuntu.iso  6.0 MiB  1.0 MiB/s",
        "ubuntu.iso  11.0 MiB  1.0 MiB/s",
        "ubuntu.iso  12.0 MiB  1.0 MiB/s",
    ]


def test_slow_progress_with_a_total_still_shows_a_line_every_few_seconds() -> None:
    out, clock = Stream(tty=False), Clock()
    p = Progress("verifying", 1000 * MiB, out, clock=clock)  # type: ignore[arg-type]
    for _ in range(20):  # 1 MiB/s: under a tenth in 20 s
        clock.now += 1
        p.update(MiB)
    assert len(out.text.splitlines()) == 1 + 3  # the first, then at 6, 11, 16 s
    assert "ETA 16:24" in out.text.splitlines()[-1]  # at 16 s: 984 MiB left at 1 MiB/s


def test_resumed_download_rates_only_the_new_bytes() -> None:
    out, clock = Stream(tty=False), Clock()
    p = Progress("ubuntu.iso", 100 * MiB, out, start=50 * MiB, clock=clock)  # type: ignore[arg-type]
    clock.now += 10
    p.update(20 * MiB)
    assert " 70%  70.0 MiB / 100.0 MiB  2.0 MiB/s  ETA 0:15" in out.text


def test_redrawn_in_place_on_a_terminal_at_most_five_times_a_second() -> None:
    out, clock = Stream(tty=True), Clock()
    p = Progress("writing", 10 * MiB, out, clock=clock)  # type: ignore[arg-type]
    for _ in range(10):  # ten updates within 0.1 s: one redraw
        clock.now += 0.01
        p.update(MiB // 2)
    clock.now += 0.3
    p.update(5 * MiB)  # 10 MiB in 0.4 s
    p.close()
    assert out.text.count("\r") == 3  # first update, the one 0.3 s later, close
    assert "\n" not in out.text[:-1]
    assert out.text.endswith("100%  10.0 MiB / 10.0 MiB  25.0 MiB/s  ETA 0:00\x1b[K\n")


def test_quiet_progress_writes_nothing() -> None:
    out = Stream(tty=False)
    p = Progress("writing", MiB, out, quiet=True)  # type: ignore[arg-type]
    p.update(MiB)
    p.close()
    progress.set_quiet(True)
    q = Progress("writing", MiB, out)  # type: ignore[arg-type]
    q.update(MiB)
    q.close()
    assert out.text == ""


def test_close_twice_prints_once() -> None:
    out = Stream(tty=True)
    p = Progress("x", MiB, out)  # type: ignore[arg-type]
    p.close()
    p.close()
    assert out.text.count("\n") == 1


def _flash_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, *opts: str) -> str:
    image = tmp_path / "node.iso"
    image.write_bytes(hashlib.sha256(b"x").digest() * (MiB // 32))
    main([*opts, "flash", str(image), str(tmp_path / "out.img")])
    return capsys.readouterr().err


def test_cli_shows_progress_on_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _flash_cli(capsys, tmp_path)
    assert "writing [" in err and "verifying [" in err


def test_cli_quiet_silences_progress(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _flash_cli(capsys, tmp_path, "-q")
    assert "writing" not in err and "verifying" not in err and "[" not in err
    assert not progress.is_quiet(), "-q lasts for one command"
