"""Device-mapper stacking, swap by /dev/mapper name and a mount table with undecodable bytes,
on a small sysfs tree built here (issue 18, round 5: blockdev ``_Graph`` and
``_with_problems`` survivors of round 3 that the three fixture machines do not reach).

The tree follows the kernel's sysfs layout (Documentation/ABI/stable/sysfs-block: ``dev``,
``size`` in 512-byte sectors, ``removable``, ``ro``, ``holders/``, ``slaves/``, ``dm/name``,
a ``partition`` file in partition directories); ``/proc/swaps`` and mountinfo as proc(5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.flash import blockdev
from builder.flash.blockdev import SysView


def node(d: Path, dev: str, size: int, **files: str) -> Path:
    d.mkdir(parents=True)
    (d / "dev").write_text(dev + "\n")
    (d / "size").write_text(f"{size}\n")
    for name, text in files.items():
        (d / name).write_text(text + "\n")
    (d / "holders").mkdir()
    (d / "slaves").mkdir()
    return d


def build(tmp_path: Path) -> SysView:
    block = tmp_path / "sys" / "block"
    sdb = node(block / "sdb", "8:16", 4096, removable="1", ro="1")
    sdb1 = node(sdb / "sdb1", "8:17", 1024, partition="1")
    node(sdb / "sdb2", "8:18", 1024, partition="2")
    node(sdb / "sdb3", "8:19", 1024, partition="3")
    for i, dm_name in ((0, "vg-swap"), (1, "vg-data")):
        dm = node(block / f"dm-{i}", f"253:{i}", 512)
        (dm / "dm").mkdir()
        (dm / "dm" / "name").write_text(dm_name + "\n")
        (dm / "slaves" / "sdb1").mkdir()
        (sdb1 / "holders" / f"dm-{i}").mkdir()
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_bytes(
        b"22 1 0:20 / / rw - btrfs /dev/nvme9n1p1 rw\n"  # root on a disk this view lacks
        b"30 22 0:44 / /media/caf\xe9 rw - vfat /dev/sdb2 rw\n"  # latin-1 byte, by path
    )
    swaps = tmp_path / "swaps"
    swaps.write_text(
        "Filename\tType\tSize\tUsed\tPriority\n"
        "/dev/mapper/vg-swap\tpartition\t262140\t0\t-2\n"
        "/dev/sdb3\tpartition\t524284\t0\t-3\n"
    )
    return SysView(tmp_path / "sys", mountinfo, swaps)


def texts(problems) -> list[str]:
    return [p.message for p in problems]


def test_the_whole_disk(tmp_path) -> None:
    v = build(tmp_path)
    [sdb] = [d for d in blockdev.scan(v) if d.name == "sdb"]
    assert sdb.mounts == ("/media/caf\ufffd",)
    assert sdb.swap == ("/dev/mapper/vg-swap", "/dev/sdb3")
    assert sdb.holders == ("dm-0", "dm-1")
    assert [(p.name, p.devno, p.size, p.mounts) for p in sdb.partitions] == [
        ("sdb1", "8:17", 1024 * 512, ()),
        ("sdb2", "8:18", 1024 * 512, ("/media/caf\ufffd",)),
        ("sdb3", "8:19", 1024 * 512, ()),
    ]
    assert texts(sdb.problems) == [
        "has mounted filesystems and the root filesystem's disk cannot be identified",
        "is read-only (write-protect switch?)",
        "has mounted filesystems: /media/caf\ufffd",
    ]


def test_a_partition_held_by_two_mappings(tmp_path) -> None:
    t = blockdev.inspect("sdb1", view=build(tmp_path))
    assert t is not None
    assert texts(t.problems)[-2:] == [
        "is in use: holder dm-0, holder dm-1",
        "is a partition of /dev/sdb, not a whole disk",
    ]


def test_a_partition_used_as_swap(tmp_path) -> None:
    t = blockdev.inspect("8:19", view=build(tmp_path))
    assert t is not None and t.name == "sdb3"
    assert texts(t.problems)[-2:] == [
        "is in use: /dev/sdb3",
        "is a partition of /dev/sdb, not a whole disk",
    ]


def test_a_mapping_found_by_its_mapper_name(tmp_path) -> None:
    v = build(tmp_path)
    graph = blockdev._Graph(v)
    assert graph.swapping == {"dm-0": ["/dev/mapper/vg-swap"], "sdb3": ["/dev/sdb3"]}
    assert graph.resolve("", "/dev/mapper/vg-data") == "dm-1"
    assert graph.resolve("", "/dev/mapper/nope") is None
    assert graph.resolve("0:44", "/dev/sdb2") == "sdb2"  # 0:N is no block device: by path
    assert graph.resolve("8:18", "/dev/whatever") == "sdb2"
    assert graph.resolve("", "/dev/nvme9n1p1") is None
    assert graph.root_name is None and graph.root_lower == set()


def with_mounts(tmp_path: Path, lines: bytes) -> SysView:
    v = build(tmp_path)
    v.mountinfo.write_bytes(lines)
    return v


def test_root_found_by_device_number_when_its_source_is_dev_root(tmp_path) -> None:
    # the kernel names the root mount's source /dev/root when it mounted it itself
    v = with_mounts(tmp_path, b"22 1 8:18 / / rw - ext4 /dev/root rw\n")
    graph = blockdev._Graph(v)
    assert graph.root_name == "sdb2" and graph.root_lower == {"sdb2", "sdb"}
    [sdb] = [d for d in blockdev.scan(v) if d.name == "sdb"]
    assert texts(sdb.problems)[0] == "holds the running system's root filesystem (/)"
    assert sdb.mounts == ("/",) and sdb.partitions[1].mounts == ("/",)


def test_no_root_mount_listed_means_the_root_disk_is_unknown(tmp_path) -> None:
    v = with_mounts(tmp_path, b"30 1 8:18 / /media/x rw - vfat /dev/sdb2 rw\n")
    assert blockdev._Graph(v).root_name is None
    [sdb] = [d for d in blockdev.scan(v) if d.name == "sdb"]
    assert texts(sdb.problems)[0] == (
        "has mounted filesystems and the root filesystem's disk cannot be identified"
    )


def test_a_partitions_mounts_include_what_is_stacked_on_it(tmp_path) -> None:
    v = with_mounts(
        tmp_path,
        b"22 1 0:20 / / rw - btrfs /dev/nvme9n1p1 rw\n"
        b"31 22 253:1 / /srv rw - ext4 /dev/mapper/vg-data rw\n",
    )
    [sdb] = [d for d in blockdev.scan(v) if d.name == "sdb"]
    assert [(p.name, p.mounts) for p in sdb.partitions] == [
        ("sdb1", ("/srv",)),
        ("sdb2", ()),
        ("sdb3", ()),
    ]


def test_logical_block_size_is_read_from_the_queue(tmp_path) -> None:
    v = build(tmp_path)
    q = tmp_path / "sys" / "block" / "sdb" / "queue"
    q.mkdir()
    (q / "logical_block_size").write_text("4096\n")  # a 4Kn disk
    disks = {d.name: d for d in blockdev.scan(v)}
    assert disks["sdb"].logical_block_size == 4096
    assert disks["dm-0"].logical_block_size == 512  # no queue/ here: the 512-byte default


def test_an_unreadable_mount_table_is_said(tmp_path) -> None:
    v = build(tmp_path)
    v.mountinfo.unlink()
    with pytest.raises(BuilderError) as e:
        blockdev.scan(v)
    assert e.value.message == (
        f"{v.mountinfo}: cannot read the mount table (No such file or directory);"
        " without it no disk can be called safe"
    )
