"""Benchmark: remastering a >= 1 GiB base ISO vs copying it with `cp`, before/after, one run.

Run: `make bench-remaster` or
`.venv/bin/python tests/bench/bench_remaster.py [SIZE_MIB] [RUNS] [DIR]` (DIR: where the
base copy and the outputs live, default beside the cached fixture; /dev/shm takes the disk
out of the figures, leaving the CPU and memory work).

The base is the stand-in Ubuntu-layout fixture (tests/support/ubuntu_like_iso.py) padded to
SIZE_MIB (default 1100 MiB) with a big file, cached next to the fixture. Every round times,
alternating, on the same file system with a warm page cache:

- `cp BASE OUT` (the baseline: the least a remaster must do is read and write every byte);
- remaster BEFORE (xorriso modifying mode: the whole image rewritten) and AFTER (growing
  mode on a copy_file_range copy: one session appended), both builder.iso.remaster;
- the whole `build_iso` (render, verify the base, remaster, hash the output, fsync, rename)
  BEFORE (base hashed every time, rewrite, output hashed by reading it) and AFTER (the base's
  recorded hash trusted while unchanged, growing, output hashed from the page cache while it
  is flushed), plus AFTER with the base never seen before (its hash recorded: "cold").

BEFORE is the pre-issue-17 code path selected inside this run (iso._grow off, no base hash
record, sha256_file on the output), so both sides meet the same machine load. Prints
medians of RUNS (default 5), the ratios to cp, the CPU time (user+sys of this process and
its children: steadier than wall time on a busy machine) and the load averages.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder.fsutil import sha256_file  # noqa: E402
from builder.run import run  # noqa: E402
from builder.site.profile import load_profile  # noqa: E402
from builder.targets import fetch, image, iso  # noqa: E402
from tests.support.iso_inputs import fixture_overrides, iso_tree  # noqa: E402
from tests.support.ubuntu_like_iso import build_fixture, fixture_key, pad_copy  # noqa: E402

WALL: dict[str, list[float]] = {}
CPU: dict[str, list[float]] = {}


def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(key: str, fn: Callable[[], object]) -> None:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    WALL.setdefault(key, []).append(time.perf_counter() - t0)
    CPU.setdefault(key, []).append(_cpu() - c0)


PHASES: list[dict[str, float]] = []  # per AFTER build: wall seconds in each phase


@contextmanager
def phases() -> Iterator[None]:
    """Time build_iso's phases (wall): render, the base's verification, the copy, the rest
    of the remaster (xorriso: inspect, stage, grow), the output's sha256 + fsync."""
    got: dict[str, float] = {}
    names = [
        (image, "render_site", "render"),
        (fetch, "file_sha256", "verify the base (trusted record or sha256)"),
        (iso, "copy_base", "copy of the base (copy_file_range)"),
        (iso, "remaster", "remaster (copy + xorriso)"),
        (image, "hash_and_flush", "sha256 + fsync of the output"),
    ]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in names]

    def wrap(fn: Callable, label: str) -> Callable:
        def timed_call(*a, **k):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                got[label] = got.get(label, 0.0) + time.perf_counter() - t0

        return timed_call

    for mod, attr, label in names:
        setattr(mod, attr, wrap(getattr(mod, attr), label))
    t0 = time.perf_counter()
    try:
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
        total = time.perf_counter() - t0
        rem = got.pop("remaster (copy + xorriso)", 0.0)
        copy = got.get("copy of the base (copy_file_range)", 0.0)
        got["xorriso (inspect, stage, grow)"] = rem - copy
        got["the rest (build dir, manifest, rename)"] = (
            total - rem - sum(v for k, v in got.items() if not k.startswith(("copy", "xorriso")))
        )
        PHASES.append(got)


def sha256_throughput(mib: int = 512) -> float:
    """Bytes/s of hashlib.sha256 on this CPU, in memory (one core, no I/O)."""
    import hashlib

    block = os.urandom(8 << 20)
    h = hashlib.sha256()
    c0 = time.process_time()
    for _ in range(mib // 8):
        h.update(block)
    return (mib << 20) / max(time.process_time() - c0, 1e-9)


@contextmanager
def before() -> Iterator[None]:
    """The pre-issue-17 build_iso path: rewrite, hash the base and the output by reading."""
    saved = (iso._grow, fetch.file_sha256, image.hash_and_flush)
    iso._grow = lambda *a, **k: False  # type: ignore[assignment]
    fetch.file_sha256 = sha256_file  # type: ignore[assignment]
    image.hash_and_flush = lambda p: (sha256_file(p), p.stat().st_size)  # type: ignore[assignment]
    try:
        yield
    finally:
        iso._grow, fetch.file_sha256, image.hash_and_flush = saved  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    size_mib = int(argv[0]) if argv else 1100
    runs = int(argv[1]) if len(argv) > 1 else 5
    fixture = build_fixture()
    big = fixture.parent / f"padded-{size_mib}m-{fixture_key()}.iso"
    if not big.is_file():
        print(f"making a {size_mib} MiB base from the fixture …", file=sys.stderr)
        pad_copy(fixture, big, size_mib << 20)
    size = big.stat().st_size
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")
    where = Path(argv[2]) if len(argv) > 2 else big.parent  # e.g. /dev/shm: no disk noise
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=where, prefix="bench.") as tmp:
        t = Path(tmp)
        if where != big.parent:
            run(["cp", big, t / big.name])
            big = t / big.name
        os.environ["BUILDER_CACHE_DIR"] = str(t / "cache")  # the base hash record lives here
        add = iso_tree(t / "build")
        out = t / "out.iso"
        profile = load_profile("onprem", REPO / "profiles", fixture_overrides(big))
        with open(big, "rb") as fh:  # warm the page cache for everyone
            while fh.read(16 << 20):
                pass

        def remaster() -> None:
            out.write_bytes(b"")
            iso.remaster(big, out, add, volume_id="NODEFORGE_BENCH", grub_timeout=5)

        def build(tag: str) -> None:
            image.build_iso(
                profile, dist=t / f"dist-{tag}", build_dir=t / "b", base_iso=big, force=True
            )

        for _ in range(runs):
            timed("cp", lambda: run(["cp", big, out]))
            out.unlink()
            with before():
                timed("remaster before", remaster)
            out.unlink()
            timed("remaster after", remaster)
            out.unlink()
            with before():
                timed("build_iso before", lambda: build("before"))
            (t / "cache").mkdir(exist_ok=True)
            for record in (t / "cache").rglob("hashes/*.json"):
                record.unlink()  # the base never seen before: hashed (and recorded)
            timed("build_iso after, cold", lambda: build("cold"))
            with phases():
                timed("build_iso after", lambda: build("after"))
            for d in t.glob("dist-*"):
                for f in d.glob("*.iso"):
                    f.unlink()
    load1 = os.getloadavg()
    mib = size / (1 << 20)
    cp_wall, cp_cpu = statistics.median(WALL["cp"]), statistics.median(CPU["cp"])
    print(f"base ISO: {mib:.0f} MiB in {where}; median of {runs} rounds; 2-core machine, shared: "
          f"load average {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at start, "
          f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at the end")  # fmt: skip
    print(f"{'':26}{'wall s':>8}{'x cp':>7}{'CPU s':>8}{'x cp':>7}   runs (wall)")
    for key in WALL:
        w, c = statistics.median(WALL[key]), statistics.median(CPU[key])
        runs_txt = " ".join(f"{x:.2f}" for x in WALL[key])
        print(
            f"{key:26}{w:8.2f}{w / cp_wall:7.2f}{c:8.2f}{c / max(cp_cpu, 1e-6):7.2f}   {runs_txt}"
        )
    print("goals: remaster <= 1.0 x cp (wall and CPU); whole build_iso <= 1.5 x cp")
    print(f"where build_iso after's time goes (median of {len(PHASES)}, wall s; cp {cp_wall:.2f}):")
    for k in PHASES[0]:
        vals = [ph.get(k, 0.0) for ph in PHASES]
        m = statistics.median(vals)
        print(f"  {k:44}{m:7.2f}{m / cp_wall:7.2f} x cp   {' '.join(f'{v:.2f}' for v in vals)}")
    speeds = [sha256_throughput() for _ in range(3)]
    bps = statistics.median(speeds)
    floor = size / bps
    print(
        f"sha256 on this CPU: {bps / 1e9:.2f} GB/s in memory, one core (runs "
        f"{' '.join(f'{x / 1e9:.2f}' for x in speeds)}): the {mib:.0f} MiB output's hash alone "
        f"is {floor:.2f} s = {floor / cp_wall:.2f} x cp; with the copy cp does, a build cannot "
        f"go under {(cp_wall + floor) / cp_wall:.2f} x cp (before render, xorriso, fsync)"
    )
    print(
        f"in CPU (steadier on a busy machine): the hash alone is {floor:.2f} s = "
        f"{floor / max(cp_cpu, 1e-6):.2f} x cp's {cp_cpu:.2f} s; copy + hash >= "
        f"{(cp_cpu + floor) / max(cp_cpu, 1e-6):.2f} x cp's CPU (goal 1.5 x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
