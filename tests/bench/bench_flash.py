"""Benchmark: `builder flash` throughput vs `dd bs=4M conv=fsync`, side by side in one run.

Run: `make bench-flash` or `.venv/bin/python tests/bench/bench_flash.py [--size-mb N]
[--rounds N]`. Targets: a loop device over a preallocated file (needs root and losetup;
skipped otherwise, with the reason printed) and a regular file. Each round runs dd and
flash on the same image and target, in alternating order, with a `sync` before each run;
figures are medians. Ratio = flash throughput / dd throughput. Goal: >= 0.95.

The figure that compares with dd is `flash --no-verify` (dd does not verify); the full
`flash` (hash while writing + read-back verify) is printed too, for what a user waits, and
`dd oflag=direct` as a stricter reference (both then bypass the page cache).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder.errors import BuilderError  # noqa: E402
from builder.flash import flasher as flash  # noqa: E402
from builder.run import run, which  # noqa: E402

MiB = 1 << 20
GOAL = 0.95


def quiet(label: str, total: int) -> flash.NoProgress:
    return flash.NoProgress()


def timed(fn: Callable[[], object]) -> float:
    os.sync()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dd(image: Path, target: Path, *extra: str) -> None:
    run(["dd", f"if={image}", f"of={target}", "bs=4M", "conv=fsync", "status=none", *extra])


def make_image(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        chunk = os.urandom(4 * MiB)
        left = size
        while left > 0:
            n = min(left, len(chunk))
            fh.write(chunk[:n])
            chunk = chunk[1:] + chunk[:1]  # not identical blocks
            left -= n


@contextlib.contextmanager
def loop_target(tmp: Path, size: int) -> Iterator[Path | None]:
    reason = None
    if os.geteuid() != 0:
        reason = "not root"
    elif which("losetup") is None:
        reason = "losetup not installed"
    elif not Path("/dev/loop-control").exists():
        reason = "no loop devices on this kernel"
    if reason:
        print(f"loop device target skipped: {reason}")
        yield None
        return
    backing = tmp / "loop.raw"
    run(["fallocate", "-l", str(size), backing])
    dev = Path(run(["losetup", "--find", "--show", backing]).stdout.strip())
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


def bench_target(name: str, image: Path, target: Path, rounds: int, size: int) -> float:
    def do_flash(verify: bool) -> Callable[[], object]:
        return lambda: flash.flash(
            image, str(target), yes=True, force=True, verify=verify, progress_factory=quiet
        )

    dd_t: list[float] = []
    fl_t: list[float] = []
    direct = None
    for r in range(rounds):
        if r % 2 == 0:
            dd_t.append(timed(lambda: dd(image, target)))
            fl_t.append(timed(do_flash(False)))
        else:
            fl_t.append(timed(do_flash(False)))
            dd_t.append(timed(lambda: dd(image, target)))
    res = flash.flash(
        image, str(target), yes=True, force=True, verify=False, progress_factory=quiet
    )
    direct = res.direct
    full = statistics.median(timed(do_flash(True)) for _ in range(max(1, rounds // 2)))
    ddd = statistics.median(
        timed(lambda: dd(image, target, "oflag=direct")) for _ in range(max(1, rounds // 2))
    )
    d, f = statistics.median(dd_t), statistics.median(fl_t)
    ratio = d / f
    rate = size / MiB
    print(f"target {name} ({target}), median of {rounds} rounds:")
    print(f"  dd bs=4M conv=fsync           {d:7.3f} s  {rate / d:8.1f} MiB/s")
    print(
        f"  builder flash --no-verify     {f:7.3f} s  {rate / f:8.1f} MiB/s   "
        f"ratio {ratio:.2f}x  (goal >= {GOAL}: {'ok' if ratio >= GOAL else 'MISSED'})"
        f"  [{'O_DIRECT' if direct else 'buffered'}]"
    )
    print(f"  builder flash (with verify)   {full:7.3f} s  {rate / full:8.1f} MiB/s end to end")
    print(
        f"  (info) dd ... oflag=direct    {ddd:7.3f} s  {rate / ddd:8.1f} MiB/s   "
        f"flash --no-verify vs it: {ddd / f:.2f}x"
    )
    print(f"  all runs: dd {[round(x, 3) for x in dd_t]}  flash {[round(x, 3) for x in fl_t]}")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=int(os.environ.get("BENCH_FLASH_MB", 1024)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_RUNS", 5)))
    ap.add_argument("--dir", type=Path, default=None, help="where to put image and targets")
    args, _ = ap.parse_known_args()  # `make bench ARGS=…` passes other scripts' args too
    size = args.size_mb * MiB
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-flash-", dir=args.dir) as tmpdir:
        tmp = Path(tmpdir)
        image = tmp / "node.iso"
        make_image(image, size)
        print(f"image {size // MiB} MiB in {tmp}")
        try:
            with loop_target(tmp, size + 16 * MiB) as dev:
                if dev is not None:
                    ratios.append(bench_target("loop", image, dev, args.rounds, size))
            out = tmp / "stick.img"
            out.write_bytes(b"")
            ratios.append(bench_target("file", image, out, args.rounds, size))
        except BuilderError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            sys.exit(1)
    print(f"worst ratio {min(ratios):.2f}x (goal >= {GOAL})")


if __name__ == "__main__":
    main()
