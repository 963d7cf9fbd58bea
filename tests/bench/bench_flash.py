"""Benchmark: `builder flash` throughput vs `dd bs=4M oflag=direct`, before/after, one run.

Run: `make bench-flash` or `.venv/bin/python tests/bench/bench_flash.py [--size-mb N]
[--rounds N]`. Targets: a loop device over a preallocated file (needs root and losetup;
skipped otherwise, with the reason printed) and a regular file. Each round runs dd and
flash on the same image and target, in alternating order, with a `sync` before each run;
figures are medians. Ratio = flash throughput / dd throughput. Goal (issue 17): >= 1.0
against `dd bs=4M oflag=direct` (both then bypass the page cache).

The figure that compares with dd is `flash --no-verify` (dd does not verify); the full
`flash` (hash while writing + read-back verify) and `dd conv=fsync` are printed too. BEFORE
is `builder/flash/blockio.py` as it was before issue 17 (read from git, BEFORE_REF), run in
the same rounds, so both meet the same machine load; the load averages are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder.errors import BuilderError  # noqa: E402
from builder.flash import flasher as flash  # noqa: E402
from builder.run import run, which  # noqa: E402

MiB = 1 << 20
GOAL = 1.0


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


BEFORE_REF = "d42203d"  # the pre-issue-17 tree: its builder/flash/blockio.py is BEFORE


def before_write_image() -> Callable[..., object] | None:
    """``write_image`` as it was at BEFORE_REF (read from git), or None outside a checkout."""
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE_REF}:builder/flash/blockio.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("blockio_before")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{BEFORE_REF}:builder/flash/blockio.py", "exec"), mod.__dict__)
    return mod.write_image  # type: ignore[no-any-return]


def bench_target(name: str, image: Path, target: Path, rounds: int, size: int) -> float:
    old = before_write_image()
    new = flash.write_image

    def do_flash(verify: bool, impl: Callable[..., object] = new) -> Callable[[], object]:
        def go() -> object:
            flash.write_image = impl  # type: ignore[assignment]
            try:
                return flash.flash(
                    image, str(target), yes=True, force=True, verify=verify,
                    progress_factory=quiet,
                )  # fmt: skip
            finally:
                flash.write_image = new  # type: ignore[assignment]

        return go

    t: dict[str, list[float]] = {}
    runs = {
        # dd() always adds conv=fsync; the baseline has none: flash fsyncs, it does not
        "dd bs=4M oflag=direct": lambda: run(
            ["dd", f"if={image}", f"of={target}", "bs=4M", "oflag=direct", "status=none"]
        ),
        "flash --no-verify BEFORE": do_flash(False, old) if old else None,
        "flash --no-verify AFTER": do_flash(False),
        "dd oflag=direct conv=fsync": lambda: dd(image, target, "oflag=direct"),
        "(info) dd bs=4M conv=fsync": lambda: dd(image, target),
        "(info) flash, verify, BEFORE": do_flash(True, old) if old else None,
        "(info) flash, verify, AFTER": do_flash(True),
    }
    order = [k for k, fn in runs.items() if fn is not None]
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            t.setdefault(key, []).append(timed(runs[key]))  # type: ignore[arg-type]
    res = flash.flash(
        image, str(target), yes=True, force=True, verify=False, progress_factory=quiet
    )
    ref = statistics.median(t["dd bs=4M oflag=direct"])
    rate = size / MiB
    print(f"target {name} ({target}), median of {rounds} rounds, alternating order "
          f"[{'O_DIRECT' if res.direct else 'buffered'}]:")  # fmt: skip
    for key in order:
        m = statistics.median(t[key])
        print(f"  {key:30} {m:7.3f} s  {rate / m:8.1f} MiB/s  {ref / m:5.2f}x dd-direct   "
              f"runs {' '.join(f'{x:.2f}' for x in t[key])}")  # fmt: skip
    after = ref / statistics.median(t["flash --no-verify AFTER"])
    same = statistics.median(t["dd oflag=direct conv=fsync"]) / statistics.median(
        t["flash --no-verify AFTER"]
    )
    print(f"  ratio flash --no-verify / dd oflag=direct: {after:.2f}x (goal >= {GOAL}: "
          f"{'ok' if after >= GOAL else 'MISSED'}); vs dd oflag=direct conv=fsync (the same "
          f"work: flash fsyncs): {same:.2f}x")  # fmt: skip
    return after


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
        print(f"image {size // MiB} MiB in {tmp}; load average at start "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
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
    print(f"worst ratio {min(ratios):.2f}x (goal >= {GOAL}); load average "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores, shared)")  # fmt: skip


if __name__ == "__main__":
    main()
