"""mountinfo parsing and the disk serial from sysfs, at their exact edges (issue 18, round 5:
blockdev survivors of rounds 3 and 5 in ``parse_mountinfo`` and ``_serial``).

Expected values come from the formats' definitions: proc(5) ``/proc/pid/mountinfo`` (six
fields, optional fields, a ``-`` separator, then filesystem type, mount source and super
options), SPC-4's Unit Serial Number VPD page 0x80 (a 4-byte header whose byte 3 is the
length of the ASCII serial that follows), and Linux's sysfs layout for USB mass storage
(the ``serial`` attribute on the USB device directory named ``<bus>-<port>[.<port>...]``).
"""

from __future__ import annotations

import os
from pathlib import Path

from builder.flash.blockdev import Mount, _serial, parse_mountinfo

# proc(5) example line (one optional field), and the same without optional fields
WITH_OPTIONAL = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
NO_OPTIONAL = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"


def test_mountinfo_lines_at_their_edges() -> None:
    text = "\n".join(
        [
            "garbage without a separator",
            WITH_OPTIONAL,
            "1 2 3 4 5 - ext4 /dev/x rw",  # five fields before '-': malformed
            NO_OPTIONAL,
            "23 1 8:2 /a /b rw - ext4",  # no mount source: malformed
            r"24 1 8:3 / /mnt/with\040space rw - vfat /dev/sdb1 rw",
        ]
    )
    assert parse_mountinfo(text) == [
        Mount("98:0", "/mnt2", "ext3", "/dev/root"),
        Mount("8:1", "/", "ext4", "/dev/sda1"),
        Mount("8:3", "/mnt/with space", "vfat", "/dev/sdb1"),
    ]
    # exactly fstype and source after '-' (no super options) is enough
    assert parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1") == [
        Mount("8:1", "/", "ext4", "/dev/sda1")
    ]


def disk(tmp_path: Path, vpd: bytes | None = None) -> tuple[Path, Path]:
    root = tmp_path / "sys"
    ddir = root / "devices" / "pci0000:00" / "ata1" / "host0" / "block" / "sda"
    (ddir / "device").mkdir(parents=True)
    if vpd is not None:
        (ddir / "device" / "vpd_pg80").write_bytes(vpd)
    return ddir, root


def test_vpd_page_80_serial(tmp_path) -> None:
    # header: peripheral 0x00, page 0x80, reserved 0x00, length 3; then padding after it
    ddir, root = disk(tmp_path, b"\x00\x80\x00\x03ABCXYZ")
    assert _serial(ddir, root) == "ABC"


def test_vpd_page_80_with_a_one_byte_serial_and_non_ascii(tmp_path) -> None:
    ddir, root = disk(tmp_path / "a", b"\x00\x80\x00\x01Z")
    assert _serial(ddir, root) == "Z"
    ddir, root = disk(tmp_path / "b", b"\x00\x80\x00\x03A\xffB")
    assert _serial(ddir, root) == "A\ufffdB"


def test_a_header_only_page_and_no_serial_anywhere(tmp_path) -> None:
    ddir, root = disk(tmp_path, b"\x00\x80\x00\x00")
    assert _serial(ddir, root) == ""


def test_usb_serial_is_on_the_usb_device_not_on_other_parents(tmp_path) -> None:
    root = tmp_path / "sys"
    usb = root / "devices" / "pci0000:00" / "usb1" / "1-1"
    host = usb / "1-1:1.0" / "host6"
    ddir = host / "target6:0:0" / "6:0:0:0" / "block" / "sdc"
    (ddir / "device").mkdir(parents=True)
    (usb / "serial").write_text("RIGHT123\n")
    (host / "serial").write_text("WRONG\n")  # not a USB device directory name
    assert _serial(ddir, root) == "RIGHT123"


def test_a_device_outside_sys_devices_has_no_serial(tmp_path) -> None:
    root = tmp_path / "sys"
    (root / "devices").mkdir(parents=True)
    other = tmp_path / "elsewhere" / "1-1" / "block" / "sdz"
    (other / "device").mkdir(parents=True)
    (tmp_path / "elsewhere" / "1-1" / "serial").write_text("NOT-UNDER-SYS")
    assert os.path.realpath(other).startswith(str(tmp_path))
    assert _serial(other, root) == ""


def test_a_header_only_page_falls_through_to_the_usb_serial(tmp_path) -> None:
    root = tmp_path / "sys"
    usb = root / "devices" / "pci0000:00" / "usb2" / "2-3.1"
    ddir = usb / "2-3.1:1.0" / "host7" / "target7:0:0" / "7:0:0:0" / "block" / "sdd"
    (ddir / "device").mkdir(parents=True)
    (ddir / "device" / "vpd_pg80").write_bytes(b"\x00\x80\x00\x00")  # no serial in it
    (usb / "serial").write_text("USB-SERIAL\n")
    assert _serial(ddir, root) == "USB-SERIAL"
