#!/usr/bin/env python3
"""Benchmark: bare cloud-init boot of the base vs our full first boot to "joined".

Baseline: QEMU (TCG here, 1 vCPU, 1 GiB, direct kernel boot, virtio, user networking in a
private network namespace) boots the Debian STAND-IN root WITHOUT our provisioning, with a
NoCloud seed holding an empty cloud-config, until cloud-init prints "finished".
Measured: the same root provisioned by our scripts (the stand-in node disk of SITE, from
tests/support/nodedisk.py), booted by the product's boot test (`builder.boottest`) with the
site's rendered user-data + a one-time token, enrolling with the real hub in a private
namespace, until the hub records the node joined (seconds from QEMU start).
Both run in this one process, one after the other, ROUNDS times; prints each figure, the
medians and the ratio (goal: <= 1.4x).

    .venv/bin/python tests/bench/bench_boot.py [--site aws] [--rounds 1]
    .venv/bin/python tests/bench/bench_boot.py --site onprem --installed   # the ISO path
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import boottest  # noqa: E402
from builder.boottest import qemu  # noqa: E402
from builder.run import run  # noqa: E402
from tests.support import bootcheck, nodedisk  # noqa: E402

GOAL = 1.4
CLOUD_INIT_DONE = r"Cloud-init v\. \S+ finished at"


def boot_bare(image: boottest.BootImage, workdir: Path, timeout: float = 900) -> float:
    """Seconds from QEMU start to cloud-init's "finished" on the bare base (markers only:
    a NoCloud seed with an empty cloud-config, user networking, no hub, no enrollment)."""
    node = boottest.make_node("bare", image, workdir, b"#cloud-config\n{}\n", "bare")
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed], network=True)
    vm.kernel, vm.initrd, vm.append = image.kernel, image.initrd, image.append
    ns = f"nfbare{os.getpid() % 100000}"
    run(["ip", "netns", "add", ns])  # same isolation as the real boots: nothing leaves
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        argv = ["ip", "netns", "exec", ns, *qemu.build_argv(vm, node.workdir / "fw")]
        res = qemu.boot(argv, node.workdir / "console.log", success=[CLOUD_INIT_DONE],
                        timeout=timeout)  # fmt: skip
    finally:
        run(["ip", "netns", "del", ns], check=False)
    return res.seconds


def cloud_init_finished(console: str) -> float | None:
    m = re.search(r"finished at .*?Up ([0-9.]+) seconds", console)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="aws")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--installed", action="store_true",
                    help="the disk installed by the stand-in installer step (ISO path), "
                    "booted with only a `builder seed` seed; goal <= 1.2x")  # fmt: skip
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="nf-bench-boot-"))
    try:
        disk = nodedisk.prepare_site(args.site, work / "prep", installed=args.installed)
        image = disk.image()
        bare_image = boottest.boot_image(nodedisk.build_bare_disk(), kernel=image.kernel,
                                         initrd=image.initrd, append=image.append)  # fmt: skip
        lab_site = boottest.prepare(args.site, work / "lab")
        bare, full, full_ci = [], [], []
        for i in range(args.rounds):
            secs = boot_bare(bare_image, work / f"bare-{i}")
            bare.append(secs)
            print(f"round {i + 1}: bare boot to cloud-init finished: {secs:6.1f} s", flush=True)
            marker = [bootcheck.CONSOLE_MARKER]
            res = boottest.run_boot_test(lab_site, image, work / f"full-{i}", nodes=1,
                                         reboot=False, console=marker,
                                         node_seed_only=args.installed)  # fmt: skip
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
        goal = 1.2 if args.installed else GOAL
        verdict = "met" if ratio <= goal else "NOT met"
        print(f"ratio full/bare: {ratio:.2f}x (goal <= {goal}x: {verdict})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
