"""Benchmark: render + validate for one site, side by side with a baseline.

Run: `make bench` or `.venv/bin/python tests/bench/bench_render.py [SITE]`.
Baseline: loading and validating the profile only (no rendering). Figures are medians.
Goal: render < 0.3 s.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import targets  # noqa: E402
from builder.site.profile import load_profile  # noqa: E402
from builder.site.render import render_site  # noqa: E402


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    site = sys.argv[1] if len(sys.argv) > 1 else "onprem"
    os.chdir(REPO)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")
    runs = int(os.environ.get("BENCH_RUNS", "15"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / site
        load = median_time(lambda: load_profile(site), runs)
        render = median_time(lambda: render_site(load_profile(site), out), runs)
        print(f"site {site}: median of {runs} runs")
        print(f"  baseline  load+validate profile   {load * 1000:8.1f} ms")
        print(
            f"  render    load+render tree        {render * 1000:8.1f} ms   "
            f"({render / load:.1f}x baseline; goal < 300 ms: "
            f"{'ok' if render < 0.3 else 'MISSED'})"
        )
        for check in targets.CHECKS:
            t = median_time(lambda c=check: c.func(out), max(3, runs // 5))
            print(f"  validate  {check.name:<22}  {t * 1000:8.1f} ms   ({t / render:.1f}x render)")


if __name__ == "__main__":
    main()
