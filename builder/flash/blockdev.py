"""Block devices as the kernel describes them: ``/sys/block`` plus the mount table.

Read-only. Everything is read through a :class:`SysView` (a sysfs root, a mountinfo file,
a swaps file), so tests can point it at fixture trees of real layouts and no test ever
needs to look at, let alone touch, a real disk.

What we read (Linux sysfs ABI, ``Documentation/ABI/stable/sysfs-block``):

``/sys/block/<disk>``            symlink into ``/sys/devices/...``: the path tells the bus
                                 (``.../usbN/...`` → usb, ``.../ataN/...`` → sata, ...)
``<disk>/dev``                   ``major:minor``, matched against mountinfo field 3
``<disk>/size``                  in 512-byte sectors, whatever the logical block size
``<disk>/removable`` ``ro``      flags
``<disk>/<disk>N/partition``     marks a partition directory (with its own ``dev``, ``size``)
``<disk>/holders/`` ``slaves/``  device-mapper / md stacking (LUKS, LVM, RAID)
``<disk>/device/{vendor,model,serial,vpd_pg80}``   identity; USB serials sit on the USB
                                 device further up the path
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.progress import human_size

SECTOR = 512

# Problem codes. HARD problems are never overridden, not even by --force.
ROOT = "root"
ROOT_UNKNOWN = "root-unknown"
READONLY = "read-only"
NO_MEDIUM = "no-medium"
TOO_SMALL = "too-small"
NOT_REMOVABLE = "not-removable"
MOUNTED = "mounted"
IN_USE = "in-use"
PARTITION = "partition"
HARD = frozenset({ROOT, ROOT_UNKNOWN, READONLY, NO_MEDIUM, TOO_SMALL})


@dataclass(frozen=True)
class SysView:
    """Where to read the kernel's view from; the defaults are the running system."""

    sys_root: Path = Path("/sys")
    mountinfo: Path = Path("/proc/self/mountinfo")
    swaps: Path = Path("/proc/swaps")

    @property
    def is_host(self) -> bool:
        """True when this is the running system (not a fixture): only then may we write."""
        return (
            Path(self.sys_root) == Path("/sys")
            and Path(self.mountinfo) == Path("/proc/self/mountinfo")
            and Path(self.swaps) == Path("/proc/swaps")
        )


@dataclass(frozen=True)
class Mount:
    devno: str  # "major:minor" as in mountinfo (0:N for btrfs, overlay, tmpfs, ...)
    target: str
    fstype: str
    source: str


@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    @property
    def hard(self) -> bool:
        return self.code in HARD


@dataclass(frozen=True)
class Partition:
    name: str
    devno: str
    size: int
    mounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Disk:
    """A whole disk (``/sys/block/<name>``) and what the system is doing with it."""

    name: str
    devno: str
    size: int
    removable: bool
    readonly: bool
    transport: str
    vendor: str = ""
    model: str = ""
    serial: str = ""
    logical_block_size: int = SECTOR
    partitions: tuple[Partition, ...] = ()
    holders: tuple[str, ...] = ()  # dm/md devices stacked on it or its partitions
    mounts: tuple[str, ...] = ()  # mount points on it, its partitions or anything stacked
    swap: tuple[str, ...] = ()  # active swap on it, its partitions or anything stacked
    holds_root: bool = False
    backing_file: str = ""  # loop devices
    problems: tuple[Problem, ...] = field(default=())

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def label(self) -> str:
        if self.backing_file:
            return f"loop device over {self.backing_file}"
        return " ".join(p for p in (self.vendor, self.model) if p) or "(no model)"

    @property
    def safe(self) -> bool:
        return not self.problems

    @property
    def candidate(self) -> bool:
        """What `builder devices` lists by default: removable media and USB disks."""
        return self.removable or self.transport == "usb"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "devno": self.devno,
            "size": self.size,
            "size_human": human_size(self.size),
            "removable": self.removable,
            "readonly": self.readonly,
            "transport": self.transport,
            "vendor": self.vendor,
            "model": self.model,
            "serial": self.serial,
            "logical_block_size": self.logical_block_size,
            "partitions": [
                {"name": p.name, "path": f"/dev/{p.name}", "size": p.size, "mounts": list(p.mounts)}
                for p in self.partitions
            ],
            "holders": list(self.holders),
            "mounts": list(self.mounts),
            "swap": list(self.swap),
            "holds_root": self.holds_root,
            "backing_file": self.backing_file,
            "safe": self.safe,
            "problems": [{"code": p.code, "message": p.message} for p in self.problems],
        }


# --- reading the mount table ----------------------------------------------------------------

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/<pid>/mountinfo`` (proc(5)); malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        mounts.append(
            Mount(
                devno=parts[2],
                target=_unescape(parts[4]),
                fstype=parts[sep + 1],
                source=_unescape(parts[sep + 2]),
            )
        )
    return mounts


def parse_swaps(text: str) -> list[str]:
    """The ``Filename`` column of ``/proc/swaps`` (first line is the header)."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


# --- reading sysfs -------------------------------------------------------------------------


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return default


def _read_int(path: Path, default: int = 0) -> int:
    try:
        return int(_read(path))
    except ValueError:
        return default


def _names(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError:
        return []


@dataclass
class _Node:
    """One block device (disk or partition) as found under /sys/block."""

    name: str
    devno: str
    dir: Path
    parent: str | None  # the disk, for partitions
    holders: list[str]
    slaves: list[str]
    dm_name: str = ""


class _Graph:
    """All block devices, their stacking, and what is mounted on them."""

    def __init__(self, view: SysView) -> None:
        self.view = view
        self.block = Path(view.sys_root) / "block"
        self.nodes: dict[str, _Node] = {}
        self.disks: list[str] = []
        for name in _names(self.block):
            ddir = self.block / name
            self.disks.append(name)
            self._add(name, ddir, None)
            for sub in _names(ddir):
                if (ddir / sub / "partition").exists():
                    self._add(sub, ddir / sub, name)
        self.by_devno = {n.devno: n.name for n in self.nodes.values() if n.devno}
        self.by_dm_name = {n.dm_name: n.name for n in self.nodes.values() if n.dm_name}

        try:
            self.mounts = parse_mountinfo(Path(view.mountinfo).read_text(errors="replace"))
        except OSError as exc:
            raise BuilderError(
                f"{view.mountinfo}: cannot read the mount table ({exc.strerror}); "
                "without it no disk can be called safe"
            ) from exc
        if not self.mounts:
            raise BuilderError(f"{view.mountinfo}: no mounts found; is it a mountinfo file?")
        self.swaps = parse_swaps(_read(Path(view.swaps)))

        self.mounted: dict[str, list[str]] = {}
        for m in self.mounts:
            owner = self.resolve(m.devno, m.source)
            if owner:
                self.mounted.setdefault(owner, []).append(m.target)
        self.swapping: dict[str, list[str]] = {}
        for filename in self.swaps:
            owner = self.resolve("", filename)
            if owner:
                self.swapping.setdefault(owner, []).append(filename)

        self.root_name: str | None = None
        root_mounts = [m for m in self.mounts if m.target == "/"]
        if root_mounts:  # the last one listed is the one on top
            self.root_name = self.resolve(root_mounts[-1].devno, root_mounts[-1].source)
        if self.root_name is None and view.is_host:
            st = os.stat("/")
            self.root_name = self.by_devno.get(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        self.root_lower = self.lower(self.root_name) if self.root_name else set()

    def _add(self, name: str, ndir: Path, parent: str | None) -> None:
        self.nodes[name] = _Node(
            name=name,
            devno=_read(ndir / "dev"),
            dir=ndir,
            parent=parent,
            holders=_names(ndir / "holders"),
            slaves=_names(ndir / "slaves"),
            dm_name=_read(ndir / "dm" / "name"),
        )

    def resolve(self, devno: str, source: str) -> str | None:
        """Name of the block device behind a mount: by number, else by its /dev path."""
        if devno in self.by_devno and not devno.startswith("0:"):
            return self.by_devno[devno]
        if not source.startswith("/dev/"):
            return None
        if source.startswith("/dev/mapper/"):
            return self.by_dm_name.get(source.removeprefix("/dev/mapper/"))
        real = source
        if self.view.is_host:
            real = os.path.realpath(source)
        name = Path(real).name
        return name if name in self.nodes else None

    def upper(self, name: str) -> set[str]:
        """``name``, its partitions and everything stacked on any of them."""
        seen: set[str] = set()
        todo = [name] + [n.name for n in self.nodes.values() if n.parent == name]
        while todo:
            cur = todo.pop()
            if cur in seen or cur not in self.nodes:
                continue
            seen.add(cur)
            todo.extend(self.nodes[cur].holders)
            todo.extend(n.name for n in self.nodes.values() if n.parent == cur)
        return seen

    def lower(self, name: str) -> set[str]:
        """``name``, the disk it is a partition of, and everything it is stacked on."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            cur = todo.pop()
            if cur in seen or cur not in self.nodes:
                continue
            seen.add(cur)
            node = self.nodes[cur]
            todo.extend(node.slaves)
            if node.parent:
                todo.append(node.parent)
        return seen


def _transport(graph: _Graph, name: str) -> str:
    """The bus, from the device path the way lsblk's TRAN column sees it."""
    link = graph.block / name
    try:
        real = os.path.realpath(link)
    except OSError:
        real = str(link)
    parts = Path(real).parts
    if any(re.fullmatch(r"usb\d+", p) for p in parts):
        return "usb"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("mmcblk"):
        return "mmc"
    if name.startswith("loop"):
        return "loop"
    if any(re.fullmatch(r"ata\d+", p) for p in parts):
        return "sata"
    if any(p.startswith("virtio") for p in parts):
        return "virtio"
    if name.startswith(("dm-", "md", "zram", "ram", "nbd")):
        return "virtual"
    if any(re.fullmatch(r"host\d+", p) for p in parts):
        return "scsi"
    return "unknown"


def _serial(ddir: Path, sys_root: Path) -> str:
    dev = ddir / "device"
    direct = _read(dev / "serial")
    if direct:
        return direct  # NVMe controllers, MMC cards
    vpd = dev / "vpd_pg80"  # SCSI/SATA: Unit Serial Number VPD page, 4-byte header
    try:
        raw = vpd.read_bytes()
        if len(raw) > 4:
            return raw[4 : 4 + raw[3]].decode("ascii", "replace").strip()
    except OSError:
        pass
    # USB mass storage: the serial is an attribute of the USB device up the path
    top = Path(os.path.realpath(sys_root / "devices"))
    cur = Path(os.path.realpath(ddir))
    while cur != top and top in cur.parents:
        if re.fullmatch(r"\d+-[\d.]+", cur.name) and (cur / "serial").exists():
            return _read(cur / "serial")
        cur = cur.parent
    return ""


def _disk(graph: _Graph, name: str) -> Disk:
    node = graph.nodes[name]
    ddir = node.dir
    up = graph.upper(name)
    partitions = tuple(
        Partition(
            name=n.name,
            devno=n.devno,
            size=_read_int(n.dir / "size") * SECTOR,
            mounts=tuple(
                mp for u in sorted(graph.upper(n.name)) for mp in graph.mounted.get(u, [])
            ),
        )
        for n in sorted(graph.nodes.values(), key=lambda n: n.name)
        if n.parent == name
    )
    holders = tuple(sorted(u for u in up if u != name and graph.nodes[u].parent != name))
    mounts = tuple(mp for u in sorted(up) for mp in graph.mounted.get(u, []))
    swap = tuple(s for u in sorted(up) for s in graph.swapping.get(u, []))
    disk = Disk(
        name=name,
        devno=node.devno,
        size=_read_int(ddir / "size") * SECTOR,
        removable=_read(ddir / "removable") == "1",
        readonly=_read(ddir / "ro") == "1",
        transport=_transport(graph, name),
        vendor=_read(ddir / "device" / "vendor"),
        model=_read(ddir / "device" / "model"),
        serial=_serial(ddir, Path(graph.view.sys_root)),
        logical_block_size=_read_int(ddir / "queue" / "logical_block_size", SECTOR) or SECTOR,
        partitions=partitions,
        holders=holders,
        mounts=mounts,
        swap=swap,
        holds_root=name in graph.root_lower,
        backing_file=_read(ddir / "loop" / "backing_file"),
    )
    return _with_problems(graph, disk, None, None)


def _with_problems(
    graph: _Graph, disk: Disk, partition: Partition | None, image_size: int | None
) -> Disk:
    probs: list[Problem] = []
    if disk.holds_root:
        probs.append(Problem(ROOT, "holds the running system's root filesystem (/)"))
    elif graph.root_name is None and disk.mounts:
        probs.append(
            Problem(
                ROOT_UNKNOWN,
                "has mounted filesystems and the root filesystem's disk cannot be identified",
            )
        )
    if disk.readonly:
        hint = " (write-protect switch?)" if disk.removable else ""
        probs.append(Problem(READONLY, f"is read-only{hint}"))
    size = partition.size if partition else disk.size
    if size == 0:
        probs.append(Problem(NO_MEDIUM, "has no medium (size 0)"))
    elif image_size is not None and size < image_size:
        probs.append(
            Problem(
                TOO_SMALL,
                f"is smaller than the image ({human_size(size)} < {human_size(image_size)})",
            )
        )
    if not disk.candidate:
        probs.append(
            Problem(NOT_REMOVABLE, f"is not removable and not on USB (transport: {disk.transport})")
        )
    mounts = partition.mounts if partition else disk.mounts
    if mounts:
        probs.append(Problem(MOUNTED, "has mounted filesystems: " + ", ".join(mounts)))
    in_use = []
    if not partition:
        in_use = [f"swap {s}" for s in disk.swap]
        in_use += [f"holder {h}" for h in disk.holders]
    else:
        in_use = [f"holder {h}" for h in sorted(graph.upper(partition.name) - {partition.name})]
        in_use += [s for s in disk.swap if graph.resolve("", s) == partition.name]
    if in_use and not mounts:
        probs.append(Problem(IN_USE, "is in use: " + ", ".join(in_use)))
    if partition:
        probs.append(Problem(PARTITION, f"is a partition of /dev/{disk.name}, not a whole disk"))
    return dataclasses.replace(disk, problems=tuple(probs))


# --- public API ----------------------------------------------------------------------------


def scan(view: SysView | None = None) -> list[Disk]:
    """Every disk under ``/sys/block`` with its problems as a flash target."""
    graph = _Graph(view or SysView())
    return [_disk(graph, name) for name in graph.disks]


def list_devices(view: SysView | None = None, *, show_all: bool = False) -> list[Disk]:
    """Removable/USB disks (all non-empty disks with ``show_all``), safest first."""
    disks = scan(view)
    if show_all:
        disks = [d for d in disks if d.size > 0 or d.candidate]
    else:
        disks = [d for d in disks if d.candidate]
    return sorted(disks, key=lambda d: (not d.safe, d.name))


@dataclass(frozen=True)
class BlockTarget:
    """A block device picked as a flash target, with what stands against writing it."""

    disk: Disk
    partition: Partition | None
    problems: tuple[Problem, ...]

    @property
    def name(self) -> str:
        return self.partition.name if self.partition else self.disk.name

    @property
    def size(self) -> int:
        return self.partition.size if self.partition else self.disk.size


def inspect(
    name_or_devno: str, image_size: int | None = None, view: SysView | None = None
) -> BlockTarget | None:
    """Look a block device up by kernel name (``sdb``, ``sdb1``) or ``major:minor``.

    Returns None when the view has no such device.
    """
    graph = _Graph(view or SysView())
    name = graph.by_devno.get(name_or_devno, name_or_devno)
    node = graph.nodes.get(name)
    if node is None:
        return None
    disk_name = node.parent or name
    disk = _disk(graph, disk_name)
    partition = None
    if node.parent:
        partition = next(p for p in disk.partitions if p.name == name)
    checked = _with_problems(graph, disk, partition, image_size)
    return BlockTarget(disk=disk, partition=partition, problems=checked.problems)


def devno_of(path: str | os.PathLike[str]) -> str | None:
    """``major:minor`` of a block device node, None for anything else."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def format_table(disks: Iterable[Disk]) -> str:
    """A human table for `builder devices`."""
    rows = [("DEVICE", "SIZE", "TRAN", "RM", "MODEL", "SERIAL", "TARGET")]
    notes: list[str] = []
    for d in disks:
        verdict = "safe" if d.safe else "NO"
        rows.append(
            (
                d.path,
                human_size(d.size),
                d.transport,
                "1" if d.removable else "0",
                d.label,
                d.serial or "-",
                verdict,
            )
        )
        notes.extend(f"  {d.path} {p.message}" for p in d.problems)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if notes:
        lines += ["", "Not safe to flash:"] + notes
    return "\n".join(lines)
