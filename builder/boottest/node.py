"""Boot tests: one guest (overlay disk, seed, identity) and its boot in QEMU."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BuilderError
from builder.run import run
from builder.targets import seed

from . import qemu
from .constants import APPEND, BOOTCHECK_WAIT, MARKER, log
from .disk import NodeDisk
from .guest import parse_report
from .lab import Lab


# -- one node -------------------------------------------------------------------------------
def node_user_data(site_user_data: bytes, *, site: str, hostname: str, token: str) -> bytes:
    """The site's rendered user-data with the per-node seed entries (hostname, token) added.

    ``seed.node_seed`` makes those entries, as ``builder seed`` does for a second volume;
    here both go into one NoCloud user-data (mappings merged, ``write_files`` appended).
    """
    doc = yaml.safe_load(site_user_data)
    if not isinstance(doc, dict):
        raise BuilderError("rendered cloud-init/user-data is not a mapping")
    per_node = yaml.safe_load(
        seed.node_seed(site=site, hostname=hostname, token=token)["user-data"]
    )
    merged = dict(doc)
    for k, v in per_node.items():
        if k == "write_files":
            merged["write_files"] = list(doc.get("write_files") or []) + list(v)
        else:
            merged[k] = v
    header = site_user_data.split(b"\n", 1)[0]
    if header.strip() != b"#cloud-config":
        raise BuilderError("rendered cloud-init/user-data does not start with #cloud-config")
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, width=1000)
    return b"#cloud-config\n" + body.encode()


@dataclass
class Node:
    """One guest: its overlay disk, its seed and its console log."""

    name: str
    workdir: Path
    overlay: Path
    seed: Path
    log: Path
    boots: list[dict[str, Any]] = field(default_factory=list)
    # a machine's identity (kept across its reboots): two QEMU guests otherwise share the
    # default MAC and have no SMBIOS UUID, i.e. look like ONE machine to the hub
    mac: str = field(
        default_factory=lambda: "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
    )
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


def make_node(name: str, base: Path, workdir: Path, user_data: bytes, site: str) -> Node:
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    overlay = wd / "disk.qcow2"
    fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", base.resolve(), overlay])
    meta = f"instance-id: nodeforge-{site}-{name}-{os.urandom(4).hex()}\nlocal-hostname: {name}\n"
    sd = seed.write_seed(wd / "seed.iso", {"user-data": user_data, "meta-data": meta.encode()})
    return Node(name, wd, overlay, sd, wd / "console.log")


def machine_identity(argv: list[str], node: Node) -> list[str]:
    """Give the guest's NIC the node's own MAC (qemu.build_argv leaves QEMU's default)."""
    nic = "virtio-net-pci,netdev=net0"
    return [f"{a},mac={node.mac}" if a == nic else a for a in argv]


def boot_node(
    lab: Lab,
    node: Node,
    disk: NodeDisk,
    *,
    uefi: bool = False,
    timeout: float = 900,
    wait: float = BOOTCHECK_WAIT,
    extra_append: str = "",
) -> dict[str, Any]:
    """Boot ``node`` once (in ``lab``'s namespace); return the guest's report + timings."""
    n = len(node.boots) + 1
    console = node.workdir / f"console-{n}.log"
    opts = f" nodeforge.bootcheck.wait={int(wait)}" + (f" {extra_append}" if extra_append else "")
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed], network=True)
    if uefi:
        vm.firmware = "uefi"
        # GRUB's embedded config carries the kernel arguments; extra ones are not passed here
    elif disk.kernel is None:
        pass  # a real cloud image (--base-image): its own boot loader, BIOS
    else:
        vm.kernel, vm.initrd, vm.append = disk.kernel, disk.initrd, APPEND + opts
    vm.extra = ["-uuid", node.uuid]
    argv = lab.exec_argv(machine_identity(qemu.build_argv(vm, node.workdir / f"fw-{n}"), node))
    t0 = time.monotonic()
    res = qemu.boot(
        argv,
        console,
        success=[rf"^{MARKER} sha="],
        failure=[r"Kernel panic", r"end Kernel panic"],
        timeout=timeout,
        wait_exit=20,
    )
    report = parse_report(res.console)
    report["_seconds_to_report"] = round(res.seconds, 1)
    if report.get("joined_at_uptime") is not None and report.get("uptime"):
        # host-observed seconds from QEMU start to the joined marker
        lag = max(0.0, float(report["uptime"]) - float(report["joined_at_uptime"]))
        report["_seconds_to_joined"] = round(res.seconds - lag, 1)
    report["_powered_off"] = res.exited
    report["_console"] = str(console)
    node.boots.append(report)
    log.info("%s boot %d: %s after %.1f s (guest uptime %.1f s)", node.name, n,
             report["outcome"], res.seconds, report.get("uptime", 0))  # fmt: skip
    del t0
    return report


CLOUD_INIT_DONE = r"Cloud-init v\. \S+ finished at"


def boot_bare(disk: NodeDisk, bare: Path, workdir: Path, timeout: float = 900) -> float:
    """Seconds from QEMU start to cloud-init's "finished" on the bare base (markers only:
    a NoCloud seed with an empty cloud-config, user networking, no hub, no enrollment)."""
    node = make_node("bare", bare, workdir, b"#cloud-config\n{}\n", "bare")
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed], network=True)
    vm.kernel, vm.initrd, vm.append = disk.kernel, disk.initrd, APPEND
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
