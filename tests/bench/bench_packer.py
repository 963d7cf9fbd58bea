#!/usr/bin/env python3
"""Benchmark: a real qemu `packer build` vs the bare boot of the same base image.

Baseline: QEMU (TCG, same memory/CPUs, same direct kernel boot, same NoCloud seed shape)
boots the STAND-IN base qcow2 (Debian, builder/rootfs.py) until its sshd answers.
Measured: `builder.packer.build_packer_image(…, "qcow2")` end to end (boot, SSH, upload,
provisioning against the stand-in repo on loopback, cleanup, shutdown, qcow2 conversion).
Prints both wall times, the overhead ratio, and the size of the output qcow2 vs the base.

    .venv/bin/python tests/bench/bench_packer.py [--runs N]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from packer_site import render_standin_site, set_pkrvars  # noqa: E402

from builder.run import run, spawn  # noqa: E402
from builder.targets import packer  # noqa: E402
from tests.support.rootfs import build_base_image  # noqa: E402
from tests.support.standins import build_standin_repo  # noqa: E402

MEMORY_MB, CPUS = 1024, 2


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(3)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def bare_boot(base, work: Path) -> float:
    """Seconds from QEMU start until the guest's sshd sends its banner."""
    seed = work / "seed"
    packer.write_build_seed(seed, "nodeforge-build")
    iso = work / "seed.iso"
    run(
        [
            "xorriso",
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "cidata",
            "-J",
            "-r",
            "-o",
            iso,
            seed / "user-data",
            seed / "meta-data",
        ]
    )
    disk = work / "boot.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base.qcow2, disk])
    port = free_port()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        str(MEMORY_MB),
        "-smp",
        str(CPUS),
        "-display",
        "none",
        "-serial",
        f"file:{work / 'bare-serial.log'}",
        "-drive",
        f"file={disk},if=virtio,format=qcow2",
        "-cdrom",
        str(iso),
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net,netdev=n0",
    ]
    for pair in base.qemu_args():
        argv += pair
    start = time.monotonic()
    with spawn(argv, stop_signal=signal.SIGKILL, stop_timeout=0) as proc:
        while not ssh_banner(port):
            if proc.poll() is not None:
                raise SystemExit("qemu exited before the guest's sshd answered")
            if time.monotonic() - start > 600:
                raise SystemExit("bare boot: no sshd after 600 s")
            time.sleep(0.5)
        return time.monotonic() - start


def packer_build(base, work: Path, http_port: int) -> tuple[float, Path]:
    url = f"http://10.0.2.2:{http_port}/"
    tree = render_standin_site(
        "aws", work / "build" / "aws", url, url + "Release.key", extra=["target=qcow2"]
    )
    set_pkrvars(
        tree,
        ssh_username="nodeforge-build",
        qemu_memory_mb=MEMORY_MB,
        qemu_cpus=CPUS,
        disk_size_gb=4,
    )
    start = time.monotonic()
    result = packer.build_packer_image(
        tree,
        "qcow2",
        base_image=base.qcow2,
        qemu_args=[*base.qemu_args(), ["-serial", f"file:{work / 'packer-serial.log'}"]],
        timeout=1800,
    )
    took = time.monotonic() - start
    assert isinstance(result, packer.PackerResult)
    art = json.loads(result.manifest.read_text())["artifacts"][0]
    return took, result.plan.dist_dir / art["path"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("BUILDER_QEMU_ACCEL", "tcg")
    base = build_base_image()
    with tempfile.TemporaryDirectory(prefix="nf-bench-packer-") as tmp:
        work = Path(tmp)
        repo = build_standin_repo(work / "repo")
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(repo.path))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        bare, build = [], []
        out = None
        for i in range(args.runs):
            d = work / f"run{i}"
            d.mkdir()
            bare.append(bare_boot(base, d))
            print(f"run {i + 1}: bare boot to sshd {bare[-1]:.1f} s", file=sys.stderr)
            took, out = packer_build(base, d, server.server_address[1])
            build.append(took)
            print(f"run {i + 1}: packer build {took:.1f} s", file=sys.stderr)
        server.shutdown()
        b, p = min(bare), min(build)
        base_size = os.path.getsize(base.qcow2)
        out_size = os.path.getsize(out) if out else 0
        print(f"accelerator            tcg, {MEMORY_MB} MiB, {CPUS} vCPUs")
        print(f"bare boot to sshd      {b:7.1f} s   (baseline, best of {args.runs})")
        print(f"qemu packer build      {p:7.1f} s   (best of {args.runs})")
        print(f"overhead ratio         {p / b:7.2f} x  (packer build / bare boot)")
        print(f"base qcow2             {base_size / 2**20:7.1f} MiB")
        print(
            f"output qcow2           {out_size / 2**20:7.1f} MiB  "
            f"({out_size / base_size:.2f} x base)"
        )


if __name__ == "__main__":
    main()
