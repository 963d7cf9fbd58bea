"""Benchmark: remastering a >= 1 GiB base ISO vs copying the same file with `cp`.

Run: `make bench` or `.venv/bin/python tests/bench/bench_remaster.py [SIZE_MIB] [RUNS]`.

The base is the stand-in Ubuntu-layout fixture (tests/support/ubuntu_like_iso.py) padded to
SIZE_MIB (default 1100 MiB) with a big file, cached next to the fixture. Each run copies it
with `cp` (the baseline: the least any remaster must do is read and write every byte), then
remasters it with builder.iso.remaster (xorriso replay + the rendered files), side by side,
alternating, on the same file system, warm page cache for both. Prints medians and the
ratio, plus the CPU time of the two children (steadier than wall time on a busy machine).
Goal: remaster <= 1.1 x cp. The full `build_iso` (render + verify + remaster + output
sha256) is timed once as well, for reference.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder.run import run  # noqa: E402
from builder.site.profile import load_profile  # noqa: E402
from builder.targets import iso  # noqa: E402
from builder.targets.image import build_iso  # noqa: E402
from tests.support.iso_inputs import fixture_overrides, iso_tree  # noqa: E402
from tests.support.ubuntu_like_iso import build_fixture, fixture_key, pad_copy  # noqa: E402

CPU: dict[str, list[float]] = {"cp": [], "remaster": []}


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn, cpu_key: str | None = None) -> float:  # type: ignore[no-untyped-def]
    c0 = _child_cpu()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if cpu_key:
        CPU[cpu_key].append(_child_cpu() - c0)
    return wall


def main(argv: list[str]) -> int:
    size_mib = int(argv[0]) if argv else 1100
    runs = int(argv[1]) if len(argv) > 1 else 3
    fixture = build_fixture()
    big = fixture.parent / f"padded-{size_mib}m-{fixture_key()}.iso"
    if not big.is_file():
        print(f"making a {size_mib} MiB base from the fixture …", file=sys.stderr)
        pad_copy(fixture, big, size_mib << 20)
    size = big.stat().st_size
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")
    with tempfile.TemporaryDirectory(dir=big.parent, prefix="bench.") as tmp:
        t = Path(tmp)
        add = iso_tree(t / "build")
        out_cp, out_iso = t / "copy.iso", t / "remastered.iso"
        cp_times, rm_times = [], []
        for _ in range(runs):
            cp_times.append(timed(lambda: run(["cp", big, out_cp]), "cp"))
            out_cp.unlink()

            def remaster() -> None:
                out_iso.write_bytes(b"")
                iso.remaster(big, out_iso, add, volume_id="NODEFORGE_BENCH", grub_timeout=5)

            rm_times.append(timed(remaster, "remaster"))
            out_iso.unlink()
        profile = load_profile("onprem", REPO / "profiles", fixture_overrides(big))
        full = timed(lambda: build_iso(profile, dist=t / "dist", build_dir=t / "b", base_iso=big))
    cp_med, rm_med = statistics.median(cp_times), statistics.median(rm_times)
    mib = size / (1 << 20)
    print(f"base ISO: {mib:.0f} MiB ({big})")
    print(f"cp (baseline):  median {cp_med:6.2f} s  ({mib / cp_med:6.0f} MiB/s)  runs {cp_times}")
    print(f"remaster:       median {rm_med:6.2f} s  ({mib / rm_med:6.0f} MiB/s)  runs {rm_times}")
    print(f"ratio remaster/cp: {rm_med / cp_med:.2f} x  (goal <= 1.10 x)")
    cpu_cp, cpu_rm = statistics.median(CPU["cp"]), statistics.median(CPU["remaster"])
    print(
        f"CPU time (user+sys of the child): cp {cpu_cp:.2f} s, xorriso {cpu_rm:.2f} s, "
        f"ratio {cpu_rm / max(cpu_cp, 1e-6):.2f} x  (less sensitive to a busy machine)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.2f}")
    print(f"full build_iso (render, verify base sha256, remaster, output sha256): {full:.2f} s "
          f"= {full / cp_med:.2f} x cp")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
