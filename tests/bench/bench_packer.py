#!/usr/bin/env python3
"""Benchmark: a qcow2 rebuild with an unchanged package set vs a bare boot of the base.

Baseline: QEMU (TCG, same memory/CPUs, same direct kernel boot, same NoCloud seed shape)
boots the STAND-IN base qcow2 (Debian, tests/support/rootfs.py) until its sshd answers.
Measured: `builder.targets.packer.build_packer_image(…, "qcow2")` end to end, against the
stand-in repo on loopback:
- BEFORE: the layer cache off (``layers=False``): one Packer run, every step, every time;
- COLD: the first build of a package set (the package layer is made, then the site build);
- AFTER: a rebuild with the same package set and another site setting (the NTP server):
  the cached layer is booted and only the site steps run.
Rounds alternate bare boot and rebuild; the ratio is median(AFTER) / median(bare).
Prints every run, the medians, the ratios, and the size of the output qcow2 vs the base,
and where a rebuild's time goes (median per phase): Packer's own log (PACKER_LOG, one-second
timestamps) split at its UI messages into the checksum + copy of the layer, the boot to SSH,
the uploads and `cloud-init status --wait`, each provisioning step (provision.sh's `--- step`
lines), the shutdown and `qemu-img convert`; the rest of the wall time is ours (layer lookup
and its sha256, render-side set-up, the manifest and the output's sha256).

    .venv/bin/python tests/bench/bench_packer.py [--runs N] [--before-runs N]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import http.server
import json
import os
import re
import signal
import socket
import statistics
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
from tests.support.ports import free_port  # noqa: E402
from tests.support.rootfs import build_base_image  # noqa: E402
from tests.support.standins import build_standin_repo  # noqa: E402

MEMORY_MB, CPUS = 1024, 2
PHASES: list[dict[str, float]] = []  # per packer_build, in order


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


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


_LOGLINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) (.*)$")
_UI = re.compile(r"^ui(?: error)?: (?:==> )?\s*[\w.-]+: (.*)$")


def _phase(msg: str, current: str) -> str:
    """The phase a Packer UI message starts (or ``current`` when it starts none)."""
    m = msg.strip()
    rules = [
        ("Starting VM", "boot to SSH"),
        ("Connected to SSH", "uploads + cloud-init status --wait"),
        ("Gracefully halting", "shutdown"),
        ("Converting hard drive", "qemu-img convert"),
    ]
    for needle, phase in rules:
        if needle in m:
            return phase
    step = re.search(r"--- (\S+)", m)
    if step:
        return f"step {step.group(1)}"
    if re.search(r"\] done$", m) or m.endswith(" done"):
        return "provision end (cleanup, key removal)"
    if current == "":
        return "checksum + copy of the layer"
    return current


def packer_phases(log_path: Path, start: float, end: float) -> dict[str, float]:
    """Seconds per phase of one Packer run from its PACKER_LOG file (see the docstring)."""
    events: list[tuple[float, str]] = []
    last = None
    for line in log_path.read_text(errors="replace").splitlines():
        m = _LOGLINE.match(line)
        if not m:
            continue
        ts = datetime.datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").timestamp()
        last = ts
        ui = _UI.match(m.group(2))
        if ui:
            events.append((ts, ui.group(1)))
    out: dict[str, float] = {}
    if not events or last is None:
        return out
    first = min(events[0][0], last)
    phase, since = "checksum + copy of the layer", first
    for ts, msg in events:
        new = _phase(msg, phase)
        if new != phase:
            out[phase] = out.get(phase, 0.0) + ts - since
            phase, since = new, ts
    out[phase] = out.get(phase, 0.0) + last - since
    out["ours: before Packer (lookup, sha256, set-up)"] = max(0.0, first - start)
    out["ours: after Packer (manifest, sha256)"] = max(0.0, end - last - 1)
    return out


def packer_build(
    base, work: Path, http_port: int, ntp: str, layers: bool | None = None
) -> tuple[float, Path, object]:
    url = f"http://10.0.2.2:{http_port}/"
    tree = render_standin_site(
        "aws",
        work / "build" / "aws",
        url,
        url + "Release.key",
        extra=["target=qcow2", f"time_sync.servers=[{ntp}]"],
    )
    set_pkrvars(
        tree,
        ssh_username="nodeforge-build",
        qemu_memory_mb=MEMORY_MB,
        qemu_cpus=CPUS,
        disk_size_gb=4,
    )
    os.environ["PACKER_LOG"] = "1"
    os.environ["PACKER_LOG_PATH"] = str(work / "packer.log")
    wall0 = time.time()
    start = time.monotonic()
    result = packer.build_packer_image(
        tree,
        "qcow2",
        base_image=base.qcow2,
        qemu_args=[*base.qemu_args(), ["-serial", f"file:{work / 'packer-serial.log'}"]],
        timeout=1800,
        layers=layers,
    )
    took = time.monotonic() - start
    PHASES.append(packer_phases(work / "packer.log", wall0, time.time()))
    assert isinstance(result, packer.PackerResult)
    art = json.loads(result.manifest.read_text())["artifacts"][0]
    return took, result.plan.dist_dir / art["name"], result.layer


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--runs", type=int, default=5, help="rounds of bare boot + rebuild")
    ap.add_argument("--before-runs", type=int, default=1, help="builds with the cache off")
    ap.add_argument(
        "--layer-cache",
        type=Path,
        default=None,
        help="keep the layer cache here (default: a fresh one); with --port, a later run "
        "finds the layer an earlier run made (then --no-cold)",
    )
    ap.add_argument("--port", type=int, default=0, help="the stand-in repo's port (in the key)")
    ap.add_argument("--no-cold", action="store_true", help="the layer exists: rounds only")
    args = ap.parse_args()
    os.environ.setdefault("BUILDER_QEMU_ACCEL", "tcg")
    base = build_base_image()
    with tempfile.TemporaryDirectory(prefix="nf-bench-packer-") as tmp:
        work = Path(tmp)
        os.environ["BUILDER_LAYER_CACHE_DIR"] = str(args.layer_cache or work / "layers")
        repo = build_standin_repo(work / "repo")
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", args.port), functools.partial(Quiet, directory=str(repo.path))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        bare, after, before = [], [], []
        after_phases: list[dict[str, float]] = []
        loads: list[str] = []

        def say(msg: str) -> None:
            print(f"{msg}   (load {load()})", file=sys.stderr, flush=True)

        for i in range(args.before_runs):
            d = work / f"before{i}"
            d.mkdir()
            took, _, _ = packer_build(base, d, port, f"ntp-b{i}.example.net", layers=False)
            before.append(took)
            say(f"before {i + 1}: packer build, layer cache off {took:.1f} s")
        cold = 0.0
        if not args.no_cold:
            d = work / "cold"
            d.mkdir()
            cold, out, layer = packer_build(base, d, port, "ntp-cold.example.net")
            assert layer is not None and not layer.hit
            say(f"cold: package layer made + site build {cold:.1f} s")
        for i in range(args.runs):
            d = work / f"run{i}"
            d.mkdir()
            loads.append(load())
            bare.append(bare_boot(base, d))
            say(f"round {i + 1}: bare boot to sshd {bare[-1]:.1f} s")
            took, out, layer = packer_build(base, d, port, f"ntp{i}.example.net")
            assert layer is not None and layer.hit, layer
            after.append(took)
            after_phases.append(PHASES[-1])
            split = ", ".join(f"{k} {v:.0f}" for k, v in PHASES[-1].items())
            say(f"round {i + 1}: rebuild, same package set {took:.1f} s ({split})")
        server.shutdown()
        b, a = statistics.median(bare), statistics.median(after)
        base_size = os.path.getsize(base.qcow2)
        out_size = os.path.getsize(out)
        print(f"accelerator            tcg, {MEMORY_MB} MiB, {CPUS} vCPUs")
        print(f"bare boot to sshd      {b:7.1f} s   (baseline, median of {len(bare)})")
        if before:
            m = statistics.median(before)
            print(f"BEFORE: build, no cache {m:6.1f} s   {m / b:5.2f} x  (median of {len(before)})")
        if cold:
            print(f"COLD: layer + build    {cold:7.1f} s   {cold / b:5.2f} x  (once)")
        print(f"AFTER: rebuild         {a:7.1f} s   {a / b:5.2f} x  (median of {len(after)})")
        print(f"ratio (goal <= 1.5)    {a / b:7.2f} x  (rebuild / bare boot)")
        pairs = " ".join(f"{x:.1f}/{y:.1f}" for x, y in zip(after, bare, strict=True))
        print(f"rounds rebuild/bare s  {pairs}")
        print(f"load at each round     {' '.join(loads)}")
        if after_phases:
            n = len(after_phases)
            print(f"where a rebuild's time goes (median of {n}, s; bare boot {b:.1f}):")
            names = list(dict.fromkeys(k for ph in after_phases for k in ph))
            for k in names:
                vals = [ph.get(k, 0.0) for ph in after_phases]
                runs = " ".join(f"{v:.0f}" for v in vals)
                print(f"  {k:44} {statistics.median(vals):7.1f}   runs {runs}")
        print(
            f"output qcow2           {out_size / 2**20:7.1f} MiB  "
            f"({out_size / base_size:.2f} x base {base_size / 2**20:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
