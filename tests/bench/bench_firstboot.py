#!/usr/bin/env python3
"""Benchmark (issue 12): first boot of the INSTALLED disk to "joined" vs a bare boot of the
same disk without our enrollment unit. Goal: ratio <= 1.2x.

The disk is the one the ISO path installs: by default the onprem root installed by the
host-side stand-in installer (tests/support/installer.py: subiquity's files + our rendered
late-commands; cached), with ``--iso`` the disk the site's stand-in ISO installs in a guest
(``builder boot-test --iso``'s install step; adds the install time to the run).

Each round, on a fresh overlay of that one disk, QEMU (TCG here unless KVM works; 1 vCPU,
1 GiB, direct kernel boot, user networking in a private network namespace) boots it with a
``builder seed``-style seed (host name, token):

- full: our enrollment unit runs; the real hub in the namespace; seconds from QEMU start to
  the hub's ``joined_at`` for the node (``builder.boottest``, as ``boot-test`` decides it);
- bare: the same disk and seed with ``systemd.mask=nodeforge-enroll.service`` (and the
  test-only check unit masked) on the kernel command line; seconds from QEMU start to
  cloud-init's "finished" line on the console (the end of a cloud-init first boot).

Rounds alternate bare and full (each pair under the same host load); prints each round side
by side with the host's load average, the medians and the ratio. At least 5 rounds: a median
of fewer is one or two noisy boots on a shared TCG host.

    .venv/bin/python tests/bench/bench_firstboot.py [--rounds 5] [--site onprem] [--iso]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import boottest  # noqa: E402
from builder.boottest import install, qemu  # noqa: E402
from builder.run import run  # noqa: E402
from builder.targets import seed  # noqa: E402

GOAL = 1.2
MIN_ROUNDS = 5
CLOUD_INIT_DONE = r"Cloud-init v\. \S+ finished at"
MASK = " systemd.mask=nodeforge-enroll.service systemd.mask=nodeforge-bootcheck.service"


def boot_bare(image: boottest.BootImage, workdir: Path, site: str, timeout: float = 1500) -> float:
    """QEMU start -> cloud-init "finished", our enrollment unit masked, same kind of seed."""
    files = seed.node_seed(site=site, hostname=f"{site}-bare", token="bench-not-used",
                           interface_match="e*")  # fmt: skip
    node = boottest.make_node("bare", image, workdir, b"", site, files=files)
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed], network=True)
    vm.kernel, vm.initrd, vm.append = image.kernel, image.initrd, image.append + MASK
    ns = f"nffb{os.getpid() % 100000}"
    run(["ip", "netns", "add", ns])  # same isolation as the real boots: nothing leaves
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        argv = ["ip", "netns", "exec", ns, *qemu.build_argv(vm, node.workdir / "fw")]
        res = qemu.boot(argv, node.workdir / "console.log", success=[CLOUD_INIT_DONE],
                        timeout=timeout)  # fmt: skip
    finally:
        run(["ip", "netns", "del", ns], check=False)
    if "nodeforge-enroll" in res.console and "Starting" in res.console:
        for line in res.console.splitlines():
            if "Starting" in line and "nodeforge-enroll" in line:
                raise SystemExit("the bare boot started our enrollment unit: mask failed")
    return res.seconds


def installed_image(site: str, work: Path, from_iso: bool) -> tuple[boottest.BootImage, float]:
    """The installed disk (and the install's seconds when installed from the ISO here)."""
    if from_iso:
        from tests.support.standin_iso import prepare_iso_site

        s = prepare_iso_site(site, work / "iso")
        inst = install.install_iso(s.iso, work / "install", timeout=5400)
        img = boottest.boot_image(inst.disk, kernel=s.disk.kernel, initrd=s.disk.initrd)
        return img, inst.seconds
    from tests.support import nodedisk

    return nodedisk.prepare_site(site, work / "prep", installed=True).image(), 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="onprem")
    ap.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    ap.add_argument(
        "--iso", action="store_true", help="install the disk from the stand-in ISO in a guest"
    )
    args = ap.parse_args()
    if args.rounds < MIN_ROUNDS:
        ap.error(f"--rounds: at least {MIN_ROUNDS} (the median of fewer is noise)")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="nf-bench-firstboot-"))
    try:
        t0 = time.monotonic()
        image, install_s = installed_image(args.site, work, args.iso)
        prep = time.monotonic() - t0
        lab_site = boottest.prepare(args.site, work / "lab")
        bare: list[float] = []
        full: list[float] = []
        how = f"installed in the guest in {install_s:.0f} s" if args.iso else "host-side installer"
        print(f"installed disk: {image.path} ({how}; ready in {prep:.0f} s)")
        print(f"{'round':>5}  {'bare (no enroll unit)':>22}  {'full (to joined)':>17}  ratio"
              "  load (1/5/15 min)")  # fmt: skip
        for i in range(args.rounds):
            b = boot_bare(image, work / f"bare-{i}", args.site)
            res = boottest.run_boot_test(lab_site, image, work / f"full-{i}", nodes=1,
                                         reboot=False, node_seed_only=True)  # fmt: skip
            if res["problems"]:
                print("full boot failed:\n  " + "\n  ".join(res["problems"]), file=sys.stderr)
                return 1
            f = float(res["nodes"][0]["seconds_to_joined"])
            bare.append(b)
            full.append(f)
            load = "/".join(f"{x:.1f}" for x in os.getloadavg())
            print(f"{i + 1:>5}  {b:>20.1f} s  {f:>15.1f} s  {f / b:.2f}x  {load}", flush=True)
        mb, mf = statistics.median(bare), statistics.median(full)
        ratio = mf / mb
        verdict = "met" if ratio <= GOAL else "NOT met"
        print(f"median  {mb:>20.1f} s  {mf:>15.1f} s  {ratio:.2f}x (goal <= {GOAL}x: {verdict}; "
              f"{args.rounds} rounds, accel {qemu.accel()}, {os.cpu_count()} cores, load "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())})")  # fmt: skip
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
