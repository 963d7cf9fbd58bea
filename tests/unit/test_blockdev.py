"""Device discovery and the safety verdicts, on fixture trees of real layouts.

Every test reads tests/unit/fixtures/blockdev/<layout>/{sys,mountinfo,swaps}; nothing here
looks at this machine's disks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli
from builder.errors import BuilderError
from builder.flash import blockdev
from builder.flash.blockdev import SysView

FIXTURES = Path(__file__).parent / "fixtures" / "blockdev"
GiB = 1 << 30


def view(layout: str, mountinfo: Path | None = None) -> SysView:
    root = FIXTURES / layout
    return SysView(root / "sys", mountinfo or root / "mountinfo", root / "swaps")


def disks(layout: str) -> dict[str, blockdev.Disk]:
    return {d.name: d for d in blockdev.scan(view(layout))}


def codes(problems: tuple[blockdev.Problem, ...]) -> set[str]:
    return {p.code for p in problems}


def test_fixture_view_is_not_the_host() -> None:
    assert not view("laptop").is_host
    assert SysView().is_host


# --- laptop: NVMe with LUKS + LVM, snaps, a SanDisk stick ---------------------------------


def test_laptop_usb_stick_is_the_only_safe_target() -> None:
    d = disks("laptop")
    stick = d["sda"]
    assert stick.safe, stick.problems
    assert (stick.transport, stick.removable) == ("usb", True)
    assert (stick.vendor, stick.model) == ("SanDisk", "Cruzer Blade")
    assert stick.serial == "4C530001230313116165"  # from the USB device up the path
    assert stick.size == 30031872 * 512
    assert [p.name for p in stick.partitions] == ["sda1"]
    assert [x.name for x in blockdev.list_devices(view("laptop"))] == ["sda"]


def test_laptop_root_is_found_through_luks_and_lvm() -> None:
    d = disks("laptop")
    nvme = d["nvme0n1"]
    assert nvme.holds_root
    assert {"root", "not-removable", "mounted"} <= codes(nvme.problems)
    assert nvme.model == "Samsung SSD 980 PRO 1TB"
    assert nvme.serial == "S5GXNF0R912345A"
    assert nvme.transport == "nvme"
    assert set(nvme.mounts) == {"/", "/boot", "/boot/efi"}
    assert nvme.swap == ("/dev/dm-2",)
    assert {"dm-0", "dm-1", "dm-2"} <= set(nvme.holders)
    assert d["dm-1"].holds_root and d["dm-0"].holds_root
    assert not d["dm-2"].holds_root
    assert codes(d["dm-2"].problems) == {"not-removable", "in-use"}


def test_laptop_snap_loops_are_read_only_and_mounted() -> None:
    loop0 = disks("laptop")["loop0"]
    assert loop0.backing_file == "/var/lib/snapd/snaps/core22_1380.snap"
    assert {"read-only", "mounted", "not-removable"} <= codes(loop0.problems)


def test_every_partition_of_the_root_disk_is_hard_refused() -> None:
    for name in ("nvme0n1", "nvme0n1p1", "nvme0n1p2", "nvme0n1p3", "259:3", "dm-1"):
        target = blockdev.inspect(name, None, view("laptop"))
        assert target is not None, name
        assert "root" in codes(target.problems), name
        assert any(p.hard for p in target.problems)


def test_partition_of_a_stick_is_refused_softly() -> None:
    target = blockdev.inspect("sda1", GiB, view("laptop"))
    assert target is not None and target.partition is not None
    assert target.disk.name == "sda"
    assert codes(target.problems) == {"partition"}
    assert not any(p.hard for p in target.problems)


def test_stick_smaller_than_image_is_hard_refused() -> None:
    ok = blockdev.inspect("sda", 2 * GiB, view("laptop"))
    small = blockdev.inspect("sda", 16 * GiB, view("laptop"))
    assert ok is not None and small is not None
    assert ok.problems == ()
    assert codes(small.problems) == {"too-small"}
    assert "smaller than the image (14.3 GiB < 16.0 GiB)" in small.problems[0].message
    assert small.problems[0].hard


def test_unknown_device_is_none() -> None:
    assert blockdev.inspect("sdz", None, view("laptop")) is None


# --- server: md RAID1 root on two SATA disks, a data disk, an idle disk --------------------


def test_server_has_no_candidates() -> None:
    assert blockdev.list_devices(view("server")) == []
    names = [d.name for d in blockdev.list_devices(view("server"), show_all=True)]
    assert sorted(names) == ["md0", "sda", "sdb", "sdc", "sdd"]


def test_server_raid_members_hold_root() -> None:
    d = disks("server")
    for name in ("sda", "sdb", "md0"):
        assert d[name].holds_root, name
        assert "root" in codes(d[name].problems)
    assert d["sda"].transport == "sata"
    assert d["sda"].serial == "ZDS0A1B2"  # from the SCSI VPD page 0x80
    assert d["sdb"].serial == "ZDS0C3D4"
    assert d["sda"].vendor == "ATA" and d["sda"].model == "ST2000NM0008-2F3"
    assert set(d["sda"].mounts) == {"/", "/boot/efi"}


def test_server_data_disk_is_mounted_and_idle_disk_only_not_removable() -> None:
    d = disks("server")
    assert codes(d["sdc"].problems) == {"not-removable", "mounted"}
    assert d["sdc"].mounts == ("/srv/data",)
    assert codes(d["sdd"].problems) == {"not-removable"}
    assert not d["sdd"].holds_root


# --- mounted: btrfs root (0:N in mountinfo), mounted stick, USB SSD, empty reader ----------


def test_btrfs_root_is_found_by_source_path() -> None:
    d = disks("mounted")
    assert d["nvme0n1"].holds_root
    assert "/home" in d["nvme0n1"].mounts


def test_mounted_stick_is_refused_with_its_mount_point() -> None:
    stick = disks("mounted")["sda"]
    assert codes(stick.problems) == {"mounted"}
    assert stick.mounts == ("/run/media/alice/KINGSTON USB",)  # \040 decoded
    assert stick.partitions[0].mounts == ("/run/media/alice/KINGSTON USB",)


def test_usb_ssd_is_safe_though_not_removable() -> None:
    t7 = disks("mounted")["sdb"]
    assert (t7.removable, t7.transport) == (False, "usb")
    assert t7.safe
    assert t7.serial == "S5SVNG0R700123"


def test_empty_card_reader_has_no_medium() -> None:
    reader = disks("mounted")["sdc"]
    assert codes(reader.problems) == {"no-medium"}


def test_listing_puts_safe_devices_first() -> None:
    names = [d.name for d in blockdev.list_devices(view("mounted"))]
    assert names == ["sdb", "sda", "sdc"]


def test_zram_swap_is_in_use() -> None:
    assert codes(disks("mounted")["zram0"].problems) == {"not-removable", "in-use"}


# --- mount table edge cases ----------------------------------------------------------------


def test_unknown_root_device_makes_mounted_disks_hard_refusals(tmp_path: Path) -> None:
    # a container-style root (overlay) whose disk cannot be identified
    mi = (FIXTURES / "laptop" / "mountinfo").read_text().splitlines()
    mi[0] = "28 1 0:99 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w"
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(mi) + "\n")
    d = {x.name: x for x in blockdev.scan(view("laptop", path))}
    assert not d["nvme0n1"].holds_root
    assert "root-unknown" in codes(d["nvme0n1"].problems)
    assert any(p.hard for p in d["nvme0n1"].problems)
    assert d["sda"].safe  # nothing of it is mounted


def test_unreadable_or_empty_mountinfo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match="cannot read the mount table"):
        blockdev.scan(view("laptop", tmp_path / "missing"))
    (tmp_path / "empty").write_text("")
    with pytest.raises(BuilderError, match="no mounts found"):
        blockdev.scan(view("laptop", tmp_path / "empty"))


def test_parse_mountinfo_fields_and_escapes() -> None:
    line = (
        "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 shared:2 - ext3 /dev/root "
        "rw,errors=continue"
    )
    (m,) = blockdev.parse_mountinfo(line + "\ngarbage line\n")
    assert (m.devno, m.target, m.fstype, m.source) == ("98:0", "/mnt/my disk", "ext3", "/dev/root")


def test_a_stick_holding_a_mapped_device_is_in_use(tmp_path: Path) -> None:
    """LUKS opened on the stick's partition (a holder) but not mounted: still in use."""
    root = tmp_path / "laptop"
    shutil.copytree(FIXTURES / "laptop", root, symlinks=True)
    sys_ = root / "sys"
    part = sys_ / "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host0/target0:0:0"
    part = part / "0:0:0:0/block/sda/sda1"
    dm3 = sys_ / "devices/virtual/block/dm-3"
    (part / "holders").mkdir(exist_ok=True)
    (part / "holders" / "dm-3").symlink_to(os.path.relpath(dm3, part / "holders"))
    (dm3 / "dm").mkdir(parents=True)
    (dm3 / "dm" / "name").write_text("luks-stick\n")
    (dm3 / "dev").write_text("252:3\n")
    (dm3 / "size").write_text("30000000\n")
    (sys_ / "block" / "dm-3").symlink_to("../devices/virtual/block/dm-3")
    stick = {d.name: d for d in blockdev.scan(SysView(sys_, root / "mountinfo", root / "swaps"))}
    assert codes(stick["sda"].problems) == {"in-use"}
    assert "holder dm-3" in stick["sda"].problems[0].message


# --- CLI -------------------------------------------------------------------------------------


def fixture_env(layout: str) -> dict[str, str]:
    root = FIXTURES / layout
    return {
        "BUILDER_SYS_ROOT": str(root / "sys"),
        "BUILDER_MOUNTINFO": str(root / "mountinfo"),
        "BUILDER_SWAPS": str(root / "swaps"),
    }


def test_cli_devices_table_marks_safe_targets() -> None:
    res = CliRunner().invoke(cli, ["devices"], env=fixture_env("mounted"))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["DEVICE", "SIZE", "TRAN", "RM", "MODEL", "SERIAL", "TARGET"]
    row = {ln.split()[0]: ln for ln in lines[1:4]}
    assert row["/dev/sdb"].endswith("safe")
    assert row["/dev/sda"].endswith("NO")
    assert "/dev/sda has mounted filesystems: /run/media/alice/KINGSTON USB" in res.output
    assert "nvme0n1" not in res.output


def test_cli_devices_json() -> None:
    res = CliRunner().invoke(cli, ["devices", "--json", "--all"], env=fixture_env("laptop"))
    assert res.exit_code == 0, res.output
    data = {d["name"]: d for d in json.loads(res.output)}
    assert data["sda"]["safe"] is True
    assert data["sda"]["serial"] == "4C530001230313116165"
    assert data["sda"]["partitions"][0]["path"] == "/dev/sda1"
    assert data["nvme0n1"]["safe"] is False
    assert "root" in {p["code"] for p in data["nvme0n1"]["problems"]}
    assert "loop3" not in data  # an unattached loop device (size 0) is not listed


def test_cli_devices_none_found() -> None:
    res = CliRunner().invoke(cli, ["devices"], env=fixture_env("server"))
    assert res.exit_code == 0
    assert "no removable or USB disks found" in res.output
