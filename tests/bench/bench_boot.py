#!/usr/bin/env python3
"""Benchmark: bare cloud-init boot of the base vs our full first boot to "joined".

Baseline: QEMU (TCG here, 1 vCPU, 1 GiB, direct kernel boot, virtio, user networking in a
private network namespace) boots the Debian STAND-IN root WITHOUT our provisioning, with a
NoCloud seed holding an empty cloud-config, until cloud-init prints "finished".
Measured: the same root provisioned by our scripts (the stand-in node disk of SITE), with
the site's rendered user-data + a one-time token, enrolling with the real hub in a private
namespace, until the TEST-ONLY check unit reports the node joined.
Both run in this one process, one after the other, ROUNDS times; prints each figure, the
medians and the ratio (goal: <= 1.4x).

    .venv/bin/python tests/bench/bench_boot.py [--site aws] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import boottest  # noqa: E402

GOAL = 1.4


def cloud_init_finished(console: str) -> float | None:
    m = re.search(r"finished at .*?Up ([0-9.]+) seconds", console)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="aws")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="nf-bench-boot-"))
    try:
        setup = boottest.prepare_site(args.site, work / "prep")
        bare_disk = boottest.build_bare_disk()
        bare, full, full_ci = [], [], []
        for i in range(args.rounds):
            secs = boottest.boot_bare(setup.disk, bare_disk, work / f"bare-{i}")
            bare.append(secs)
            print(f"round {i + 1}: bare boot to cloud-init finished: {secs:6.1f} s", flush=True)
            res = boottest.run_boot_test(setup, work / f"full-{i}", nodes=1, reboot=False)
            if res["problems"]:
                print("full boot failed:\n  " + "\n  ".join(res["problems"]), file=sys.stderr)
                return 1
            (node,) = res["nodes"]
            full.append(node["seconds_to_joined"])
            console = Path(node["console"]).read_text(errors="replace")
            ci = cloud_init_finished(console)
            full_ci.append(ci or 0.0)
            print(f"round {i + 1}: full first boot to joined:    {node['seconds_to_joined']:6.1f} s"
                  f"  (cloud-init finished at guest uptime {ci} s)", flush=True)  # fmt: skip
        b, f = statistics.median(bare), statistics.median(full)
        ratio = f / b
        print(f"\nbare cloud-init boot (median of {args.rounds}): {b:6.1f} s")
        print(f"full first boot to joined ({args.site}):      {f:6.1f} s")
        verdict = "met" if ratio <= GOAL else "NOT met"
        print(f"ratio full/bare: {ratio:.2f}x (goal <= {GOAL}x: {verdict})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
