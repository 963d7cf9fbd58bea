"""The TRAN column (`builder flash` shows it so a user can tell the USB stick from the system
disk): every bus rule, on device paths shaped like Linux sysfs's (`/sys/block/NAME` is a
link into `/sys/devices/...`), including the buses the three fixture machines lack. Expected
values are lsblk's TRAN names for these buses (util-linux lsblk(8): usb, nvme, mmc, sata,
virtio; loop/dm/md/zram/ram/nbd have none there: ours says loop/virtual)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.flash import blockdev

PCI = "devices/pci0000:00"
CASES = [
    ("sdb", f"{PCI}/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb", "usb"),
    ("sdc", f"{PCI}/0000:00:14.0/usb12/12-1/12-1:1.0/host7/target7:0:0/7:0:0:0/block/sdc", "usb"),
    ("nvme0n1", f"{PCI}/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1", "nvme"),
    ("mmcblk0", f"{PCI}/0000:00:1a.0/mmc_host/mmc0/mmc0:0001/block/mmcblk0", "mmc"),
    ("loop0", "devices/virtual/block/loop0", "loop"),
    ("sda", f"{PCI}/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", "sata"),
    ("sdd", f"{PCI}/0000:00:17.0/ata12/host3/target3:0:0/3:0:0:0/block/sdd", "sata"),
    ("vda", f"{PCI}/0000:00:04.0/virtio1/block/vda", "virtio"),
    ("dm-0", "devices/virtual/block/dm-0", "virtual"),
    ("md127", "devices/virtual/block/md127", "virtual"),
    ("zram0", "devices/virtual/block/zram0", "virtual"),
    ("ram0", "devices/virtual/block/ram0", "virtual"),
    ("nbd3", "devices/virtual/block/nbd3", "virtual"),
    ("sde", f"{PCI}/0000:02:00.0/host2/target2:0:1/2:0:1:0/block/sde", "scsi"),
    ("sdf", f"{PCI}/0000:02:00.0/host14/target14:0:1/14:0:1:0/block/sdf", "scsi"),
    ("xvda", "devices/vbd-51712/block/xvda", "unknown"),
    # look-alikes that must not match: the rules want whole path parts / name prefixes
    ("sdg", f"{PCI}/0000:00:14.0/usbmon/host9/target9:0:0/block/sdg", "scsi"),
    ("sdh", f"{PCI}/0000:00:17.0/ata/target0:0:0/block/sdh", "unknown"),
    ("sdi", f"{PCI}/0000:00:17.0/hostx/target0:0:0/block/sdi", "unknown"),
    ("xnvme0", "devices/virtual/block/xnvme0", "unknown"),
]


@pytest.mark.parametrize(("name", "target", "want"), CASES, ids=[c[0] for c in CASES])
def test_transport_from_the_device_path(tmp_path: Path, name: str, target: str, want: str):
    sys_root = tmp_path / "sys"
    dev = sys_root / target
    dev.mkdir(parents=True)
    (sys_root / "block").mkdir()
    (sys_root / "block" / name).symlink_to(dev)
    graph = SimpleNamespace(block=sys_root / "block")
    assert blockdev._transport(graph, name) == want  # type: ignore[arg-type]


def test_usb_wins_over_the_name_rules(tmp_path: Path) -> None:
    """An NVMe or SD card in a USB enclosure is a USB device: the path decides first."""
    sys_root = tmp_path / "sys"
    for name in ("nvme1n1", "mmcblk1"):
        dev = sys_root / f"{PCI}/0000:00:14.0/usb2/2-1/2-1:1.0/host8/block/{name}"
        dev.mkdir(parents=True)
        (sys_root / "block").mkdir(exist_ok=True)
        (sys_root / "block" / name).symlink_to(dev)
        graph = SimpleNamespace(block=sys_root / "block")
        assert blockdev._transport(graph, name) == "usb"  # type: ignore[arg-type]


def test_a_missing_link_is_unknown(tmp_path: Path) -> None:
    graph = SimpleNamespace(block=tmp_path / "block")
    assert blockdev._transport(graph, "sdz") == "unknown"  # type: ignore[arg-type]
