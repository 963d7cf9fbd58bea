"""Device safety pinned to exact words (issue 18: mutmut changed the refusal messages, the
partition's size/mounts and the JSON of `devices --json`, and test_blockdev.py stayed green).

The expected values are facts of the fixture trees (tests/unit/fixtures/blockdev: sizes are
the sysfs `size` file x 512, mounts from their mountinfo) written out by hand, and the
messages as the README/flash docs promise them to a user about to overwrite a disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.flash import blockdev
from builder.flash.blockdev import SysView

FIXTURES = Path(__file__).parent / "fixtures" / "blockdev"
ROOT = ("root", "holds the running system's root filesystem (/)")


def view(layout: str) -> SysView:
    root = FIXTURES / layout
    return SysView(root / "sys", root / "mountinfo", root / "swaps")


def sectors(layout: str, *parts: str) -> int:
    return int((FIXTURES / layout / "sys/block" / Path(*parts) / "size").read_text()) * 512


def not_removable(transport: str) -> tuple[str, str]:
    return ("not-removable", f"is not removable and not on USB (transport: {transport})")


EXPECTED = {
    "laptop": {
        "dm-0": [ROOT, not_removable("virtual"), ("mounted", "has mounted filesystems: /")],
        "dm-1": [ROOT, not_removable("virtual"), ("mounted", "has mounted filesystems: /")],
        "dm-2": [not_removable("virtual"), ("in-use", "is in use: swap /dev/dm-2")],
        "loop0": [
            ("read-only", "is read-only"),
            not_removable("loop"),
            ("mounted", "has mounted filesystems: /snap/core22/1380"),
        ],
        "loop1": [
            ("read-only", "is read-only"),
            not_removable("loop"),
            ("mounted", "has mounted filesystems: /snap/firefox/4173"),
        ],
        "loop2": [
            ("read-only", "is read-only"),
            not_removable("loop"),
            ("mounted", "has mounted filesystems: /snap/snapd/21759"),
        ],
        "loop3": [("no-medium", "has no medium (size 0)"), not_removable("loop")],
        "nvme0n1": [
            ROOT,
            not_removable("nvme"),
            ("mounted", "has mounted filesystems: /, /boot/efi, /boot"),
        ],
        "sda": [],
    },
    "server": {
        "md0": [ROOT, not_removable("virtual"), ("mounted", "has mounted filesystems: /")],
        "sda": [ROOT, not_removable("sata"), ("mounted", "has mounted filesystems: /, /boot/efi")],
        "sdb": [ROOT, not_removable("sata"), ("mounted", "has mounted filesystems: /")],
        "sdc": [not_removable("sata"), ("mounted", "has mounted filesystems: /srv/data")],
        "sdd": [not_removable("sata")],
    },
    "mounted": {
        "nvme0n1": [
            ROOT,
            not_removable("nvme"),
            ("mounted", "has mounted filesystems: /boot/efi, /boot, /, /home"),
        ],
        "sda": [("mounted", "has mounted filesystems: /run/media/alice/KINGSTON USB")],
        "sdb": [],
        "sdc": [("no-medium", "has no medium (size 0)")],
        "zram0": [not_removable("virtual"), ("in-use", "is in use: swap /dev/zram0")],
    },
}


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_every_disk_problem_word_for_word(layout: str) -> None:
    got = {d.name: [(p.code, p.message) for p in d.problems] for d in blockdev.scan(view(layout))}
    assert got == EXPECTED[layout]


def test_partition_is_judged_by_its_own_size_and_mounts() -> None:
    disk, part = sectors("laptop", "sda"), sectors("laptop", "sda", "sda1")
    assert part < disk
    between = (disk + part) // 2  # fits the disk, not the partition
    assert not blockdev.inspect("sda", between, view("laptop")).problems  # type: ignore[union-attr]
    t = blockdev.inspect("sda1", between, view("laptop"))
    assert t is not None
    assert [p.code for p in t.problems] == ["too-small", "partition"]
    assert t.problems[1].message == "is a partition of /dev/sda, not a whole disk"
    exact = blockdev.inspect("sda1", part, view("laptop"))  # an image that exactly fits
    assert exact is not None and [p.code for p in exact.problems] == ["partition"]
    mounted = blockdev.inspect("sda1", None, view("mounted"))
    assert mounted is not None
    assert [(p.code, p.message) for p in mounted.problems] == [
        ("mounted", "has mounted filesystems: /run/media/alice/KINGSTON USB"),
        ("partition", "is a partition of /dev/sda, not a whole disk"),
    ]


def test_devices_json_for_the_stick_and_a_snap_loop() -> None:
    d = {x.name: x for x in blockdev.scan(view("laptop"))}
    size = sectors("laptop", "sda")
    assert size == 30031872 * 512
    assert d["sda"].to_dict() == {
        "name": "sda",
        "path": "/dev/sda",
        "devno": "8:0",
        "size": size,
        "size_human": "14.3 GiB",
        "removable": True,
        "readonly": False,
        "transport": "usb",
        "vendor": "SanDisk",
        "model": "Cruzer Blade",
        "serial": "4C530001230313116165",
        "logical_block_size": 512,
        "partitions": [
            {
                "name": "sda1",
                "path": "/dev/sda1",
                "size": sectors("laptop", "sda", "sda1"),
                "mounts": [],
            }
        ],
        "holders": [],
        "mounts": [],
        "swap": [],
        "holds_root": False,
        "backing_file": "",
        "safe": True,
        "problems": [],
    }
    loop = d["loop0"].to_dict()
    assert loop["backing_file"] == "/var/lib/snapd/snaps/core22_1380.snap"
    assert loop["devno"] == "7:0" and loop["readonly"] is True and loop["safe"] is False
    assert loop["mounts"] == ["/snap/core22/1380"] and loop["size_human"] == "74.1 MiB"
    assert loop["problems"][0] == {"code": "read-only", "message": "is read-only"}


def test_devices_table_word_for_word() -> None:  # noqa: E501 (the table is wide)
    table = blockdev.format_table(blockdev.list_devices(view("mounted")))
    assert table.splitlines() == [
        "DEVICE    SIZE       TRAN  RM  MODEL                      SERIAL                    TARGET",  # noqa: E501
        "/dev/sdb  465.8 GiB  usb   0   Samsung PSSD T7            S5SVNG0R700123            safe",
        "/dev/sda  28.8 GiB   usb   1   Kingston DataTraveler 3.0  E0D55EA574F1E5A1B9A40F3B  NO",
        "/dev/sdc  0 B        usb   1   Generic- SD/MMC            000000000819              NO",
        "",
        "Not safe to flash:",
        "  /dev/sda has mounted filesystems: /run/media/alice/KINGSTON USB",
        "  /dev/sdc has no medium (size 0)",
    ]
