"""Boot tests: one node (overlay disk, seed, identity), its boot in QEMU, and "joined" as
the hub sees it."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BuilderError, UsageError
from builder.node import agent
from builder.run import run
from builder.targets import seed

from . import qemu
from .constants import APPEND, HUB_POLL, HUB_URL, log
from .lab import Lab

FORMATS = ("qcow2", "raw")


# -- the image to boot -----------------------------------------------------------------------
@dataclass(frozen=True)
class BootImage:
    """A built disk image and how to start it: its own boot loader (BIOS or UEFI firmware)
    or direct kernel boot (``kernel``/``initrd``/``append``, for a disk without one)."""

    path: Path
    format: str = "qcow2"
    firmware: qemu.Firmware = "bios"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = APPEND


def image_format(path: Path) -> str:
    """``qcow2`` or ``raw``, as ``qemu-img info`` reads the file (not from its name)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such disk image")
    res = run(["qemu-img", "info", "--output=json", path], check=False, timeout=60)
    try:
        fmt = str(json.loads(res.stdout)["format"]) if res.returncode == 0 else ""
    except (ValueError, KeyError, TypeError):
        fmt = ""
    if fmt not in FORMATS:
        raise UsageError(f"{path}: not a qcow2 or raw disk image (qemu-img: {fmt or 'unreadable'})")
    return fmt


def check_boot_options(
    *,
    uefi: bool = False,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
) -> None:
    """The boot options agree (``--kernel`` excludes ``--uefi``; ``--initrd``/``--append``
    need ``--kernel``) and name files that exist."""
    if kernel is not None and uefi:
        raise UsageError("--kernel: direct kernel boot and --uefi exclude each other")
    if kernel is None and (initrd is not None or append is not None):
        raise UsageError("--initrd/--append: need --kernel (direct kernel boot)")
    for opt, p in (("--kernel", kernel), ("--initrd", initrd)):
        if p is not None and not p.is_file():
            raise UsageError(f"{opt}: {p}: no such file")


def boot_image(
    path: Path,
    *,
    uefi: bool = False,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
) -> BootImage:
    """Check a user's image (and kernel/initrd) and describe how to boot it."""
    check_boot_options(uefi=uefi, kernel=kernel, initrd=initrd, append=append)
    return BootImage(path.resolve(), image_format(path), "uefi" if uefi else "bios",
                     kernel, initrd, append or APPEND)  # fmt: skip


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
    """One guest: its overlay disk, its seed and its boots."""

    name: str
    workdir: Path
    overlay: Path
    seed: Path | None  # None: booted without a seed (the image's own config only)
    boots: list[NodeBoot] = field(default_factory=list)
    # a machine's identity (kept across its reboots): two QEMU guests otherwise share the
    # default MAC and have no SMBIOS UUID, i.e. look like ONE machine to the hub
    mac: str = field(
        default_factory=lambda: "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
    )
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


def make_node(
    name: str,
    image: BootImage,
    workdir: Path,
    user_data: bytes,
    site: str,
    *,
    files: Mapping[str, bytes] | None = None,
    with_seed: bool = True,
) -> Node:
    """A node on its own copy-on-write overlay of ``image`` (never written) + its seed:
    ``user_data`` with a fresh instance-id and ``name`` as host name, or the NoCloud
    ``files`` as given (e.g. ``seed.node_seed``'s, what ``builder seed`` writes); no seed
    at all with ``with_seed=False`` (a machine powered on with nothing but the image)."""
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    overlay = wd / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", image.format, "-b", image.path,
         overlay])  # fmt: skip
    if not with_seed:
        return Node(name, wd, overlay, None)
    if files is None:
        meta = f"instance-id: nodeforge-{site}-{name}-{os.urandom(4).hex()}\n"
        meta += f"local-hostname: {name}\n"
        files = {"user-data": user_data, "meta-data": meta.encode()}
    sd = seed.write_seed(wd / "seed.iso", files)
    return Node(name, wd, overlay, sd)


def machine_identity(argv: list[str], node: Node) -> list[str]:
    """Give the guest's NIC the node's own MAC (qemu.build_argv leaves QEMU's default)."""
    nic = "virtio-net-pci,netdev=net0"
    return [f"{a},mac={node.mac}" if a == nic else a for a in argv]


# -- "joined", from the hub's side ----------------------------------------------------------
class JoinWatch:
    """Is ``hostname`` joined as the hub sees it: its row in the hub's database in state
    ``joined`` and a WireGuard handshake with its key since ``since`` (epoch s)? Looks at
    most every ``HUB_POLL`` s, and asks the database only once some peer shook hands."""

    def __init__(self, lab: Lab, hostname: str, since: float) -> None:
        self.lab, self.hostname, self.since = lab, hostname, since
        self.row: dict[str, Any] | None = None
        self.handshake = 0
        self._last = 0.0

    def __call__(self, _console: str = "", final: bool = False) -> bool:
        if self.row is not None:
            return True
        if not final and time.monotonic() - self._last < HUB_POLL:
            return False
        if not self.lab.hub_running():
            return False
        self._last = time.monotonic()
        fresh = {k: t for k, t in self.lab.handshakes().items() if t >= int(self.since)}
        if not fresh:
            return False
        for n in self.lab.nodes():
            mine = n.get("hostname") == self.hostname and n.get("pubkey") in fresh
            if mine and n.get("state") == "joined":
                self.row, self.handshake = n, fresh[n["pubkey"]]
                return True
        return False


# the agent's line on the console once its joined marker is written (builder/node/agent.py)
JOINED_CONSOLE = re.compile(rf"^{re.escape(agent.PREFIX)} {re.escape(agent.JOINED_SAY)}\b", re.M)
# the agent's line when it cannot reach its hub, naming a hub that is not the lab's: the
# image was built for another hub (its enrollment config is baked in, the seed cannot move it)
OTHER_HUB = re.compile(
    rf"^{re.escape(agent.PREFIX)} {re.escape(agent.UNREACHABLE_SAY)} "
    rf"(?!{re.escape(HUB_URL)}:)(\S+?): ",
    re.M,
)
# the agent's line when it stops for good (a refused or expired token, a wrong CA pin, no
# WireGuard tools): the node will not join on this boot, however long one waits
STOPPED = re.compile(rf"^{re.escape(agent.PREFIX)} {re.escape(agent.STOPPED_SAY)} (.*?)\r?$", re.M)
SETTLE_GRACE = 20.0  # seconds after "joined" when the console does not show the agent's line


def failure_patterns(until_joined: bool) -> list[str]:
    """What ends a boot at once as failed: a kernel panic, a node trying another hub, and —
    when the boot must end joined — the agent stopping for good (a boot that only watches
    a failure, e.g. an expired token's, waits for its own console lines instead)."""
    out = [r"Kernel panic", r"end Kernel panic", OTHER_HUB.pattern]
    return out + [STOPPED.pattern] if until_joined else out


def failed_message(exc: qemu.BootFailed) -> qemu.BootFailed:
    """``exc`` said in the terms of what the console showed (the other hub, the stop)."""
    other = OTHER_HUB.search(exc.tail)
    if other is not None:
        return qemu.BootFailed(other_hub_message(other.group(1)), exc.tail)
    stopped = STOPPED.search(exc.tail)
    if stopped is not None and "console matched" in exc.message:
        return qemu.BootFailed(f"the node's enrollment stopped for good: {stopped.group(1)}",
                               exc.tail)  # fmt: skip
    return exc


def other_hub_message(url: str) -> str:
    """Why a node that tries another hub cannot join the lab's."""
    return (
        f"the image enrolls with the hub at {url}, not the lab's ({HUB_URL}): its enrollment "
        "config (/etc/nodeforge/node.json, the hub CA) is baked in at build time and a seed "
        "cannot move it. Boot-test an image built from the site rendered for the lab (as "
        "`builder boot-test` renders it: the boot lane's stand-in disks and Packer-built qcow2 "
        "are), or boot yours where your hub is reachable"
    )


class Settled:
    """``watch`` (the hub sees the node joined), and the node has nothing of ours left to
    write: the agent said so on the console (``JOINED_CONSOLE``), or ``SETTLE_GRACE`` s have
    passed since the hub saw it joined (a later boot, where the unit is skipped by its
    condition and says nothing; an image whose kernel console is not the serial port, e.g.
    ``console=tty0`` only), or the guest powered off by itself. It is powered off after this."""

    def __init__(self, watch: JoinWatch, grace: float = SETTLE_GRACE) -> None:
        self.watch, self.grace = watch, grace
        self.joined_at: float | None = None

    def __call__(self, console: str = "", final: bool = False) -> bool:
        if not self.watch(console, final):
            return False
        if self.joined_at is None:
            self.joined_at = time.monotonic()
        if final or JOINED_CONSOLE.search(console):
            return True
        return time.monotonic() - self.joined_at >= self.grace


@dataclass
class NodeBoot:
    """One boot of a node: what the hub saw and where the console is."""

    node: str
    boot: int
    console: str
    seconds: float  # QEMU start to the end of the boot test's wait
    joined: bool
    address: str | None = None
    node_id: str | None = None
    pubkey: str | None = None
    seconds_to_joined: float | None = None  # QEMU start to the hub's joined_at
    handshake: int | None = None
    powered_off: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def boot_node(
    lab: Lab,
    node: Node,
    image: BootImage,
    *,
    until_joined: bool = True,
    console: tuple[str, ...] = (),
    timeout: float = 900,
    wait_exit: float = 20,
) -> NodeBoot:
    """Boot ``node`` once in ``lab``'s namespace until the hub sees it joined and the node
    has settled (``Settled``), and every ``console`` regex matched; then press its power
    button and wait up to ``wait_exit`` s for it to power off. Raises ``qemu.BootFailed``
    with the console tail when it does not."""
    n = len(node.boots) + 1
    log_path = node.workdir / f"console-{n}.log"
    sock = node.workdir / f"qmp-{n}.sock"
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed] if node.seed else [],
                 network=True)  # fmt: skip
    vm.firmware = image.firmware
    if image.kernel is not None:
        vm.kernel, vm.initrd, vm.append = image.kernel, image.initrd, image.append
    vm.extra = ["-uuid", node.uuid, *(qemu.qmp_argv(sock) if len(str(sock)) < 100 else [])]
    argv = lab.exec_argv(machine_identity(qemu.build_argv(vm, node.workdir / f"fw-{n}"), node))
    since = time.time()
    watch = JoinWatch(lab, node.name, since - 1)
    try:
        res = qemu.boot(
            argv,
            log_path,
            success=list(console),
            failure=failure_patterns(until_joined),
            timeout=timeout,
            wait_exit=wait_exit,
            ready=Settled(watch) if until_joined else None,
            powerdown=(lambda: qemu.qmp_powerdown(sock)) if "-qmp" in vm.extra else None,
        )
    except qemu.BootFailed as exc:
        said = failed_message(exc)
        if said is exc:
            raise
        raise said from None
    row = watch.row or {}
    nb = NodeBoot(node.name, n, str(log_path), round(res.seconds, 1), watch.row is not None,
                  row.get("ip"), row.get("node_id"), row.get("pubkey"),
                  handshake=watch.handshake or None, powered_off=res.exited)  # fmt: skip
    if row.get("joined_at") and float(row["joined_at"]) >= since - 1:  # joined on this boot
        nb.seconds_to_joined = round(float(row["joined_at"]) - since, 1)
    node.boots.append(nb)
    log.info("%s boot %d: %s after %.1f s", node.name, n,
             "joined" if nb.joined else "done", res.seconds)  # fmt: skip
    return nb
