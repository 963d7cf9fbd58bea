"""grub.cfg / loopback.cfg / md5sum.txt patching and volume id checks (pure functions)."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from builder.errors import UsageError
from builder.targets import iso

UBUNTU_GRUB = """\
set timeout=30

loadfont unicode

menuentry "Try or Install Ubuntu Server" {
\tset gfxpayload=keep
\tlinux\t/casper/vmlinuz  ---
\tinitrd\t/casper/initrd
}
menuentry "Ubuntu Server with the HWE kernel" {
\tset gfxpayload=keep
\tlinux\t/casper/hwe-vmlinuz  ---
\tinitrd\t/casper/hwe-initrd
}
grub_platform
if [ "$grub_platform" = "efi" ]; then
menuentry 'Boot from next volume' {
\texit 1
}
else
menuentry 'Test memory' {
\tlinux16 /boot/memtest86+x64.bin
}
fi
"""

ARGS = r"autoinstall ds=nocloud\;s=/cdrom/nocloud/"


def test_every_installer_linux_line_gets_args_before_dashes() -> None:
    out = iso.patch_grub_cfg(UBUNTU_GRUB, timeout=5)
    linux = [line for line in out.splitlines() if line.strip().startswith("linux\t")]
    assert linux == [
        f"\tlinux\t/casper/vmlinuz {ARGS} ---",
        f"\tlinux\t/casper/hwe-vmlinuz {ARGS} ---",
    ]


def test_semicolon_is_escaped_for_grub() -> None:
    out = iso.patch_grub_cfg(UBUNTU_GRUB, timeout=None)
    assert "ds=nocloud\\;s=/cdrom/nocloud/" in out
    assert "ds=nocloud;s=" not in out


def test_linux16_and_other_lines_untouched() -> None:
    out = iso.patch_grub_cfg(UBUNTU_GRUB, timeout=5)
    assert "\tlinux16 /boot/memtest86+x64.bin\n" in out
    assert "\tinitrd\t/casper/initrd\n" in out
    assert out.count("autoinstall") == 2


def test_timeout_replaced() -> None:
    out = iso.patch_grub_cfg(UBUNTU_GRUB, timeout=5)
    assert "set timeout=5\n" in out
    assert "timeout=30" not in out


def test_timeout_added_when_missing_and_left_alone_when_none() -> None:
    text = 'menuentry "x" {\n linux /casper/vmlinuz ---\n}\n'
    assert iso.patch_grub_cfg(text, timeout=7).startswith("set timeout=7\n")
    assert "timeout" not in iso.patch_grub_cfg(text, timeout=None)


def test_patch_is_idempotent() -> None:
    once = iso.patch_grub_cfg(UBUNTU_GRUB, timeout=5)
    assert iso.patch_grub_cfg(once, timeout=5) == once


def test_args_after_dashes_stay_after() -> None:
    line = "\tlinux\t/casper/vmlinuz  iso-scan/filename=${iso_path} --- quiet console=ttyS0\n"
    out = iso.patch_linux_line(line)
    assert out == (
        "\tlinux\t/casper/vmlinuz  iso-scan/filename=${iso_path} "
        f"{ARGS} --- quiet console=ttyS0\n"
    )


def test_line_without_dashes_gets_args_at_end() -> None:
    assert (
        iso.patch_linux_line("linux /casper/vmlinuz quiet") == f"linux /casper/vmlinuz quiet {ARGS}"
    )


def test_linuxefi_patched_too() -> None:
    assert ARGS in iso.patch_linux_line("  linuxefi /casper/vmlinuz ---\n")


def test_md5sums_refreshed_and_new_files_added() -> None:
    text = "aaa  ./.disk/info\nbbb  ./boot/grub/grub.cfg\nccc  ./casper/vmlinuz\n"
    new_cfg = b"patched"
    out = iso.refresh_md5sums(text, {"boot/grub/grub.cfg": new_cfg, "nocloud/user-data": b"u"})
    lines = out.splitlines()
    assert lines[0] == "aaa  ./.disk/info"
    assert lines[1] == f"{hashlib.md5(new_cfg).hexdigest()}  ./boot/grub/grub.cfg"
    assert lines[2] == "ccc  ./casper/vmlinuz"
    assert lines[3] == f"{hashlib.md5(b'u').hexdigest()}  ./nocloud/user-data"


@pytest.mark.parametrize(
    "volid", ["NODEFORGE_ONPREM", "A", "X" * 32, "Ubuntu-Server 24.04 LTS amd64"]
)
def test_volume_id_ok(volid: str) -> None:
    assert iso.check_volume_id(volid) == volid


@pytest.mark.parametrize("volid", ["", "X" * 33, "NODEFORGE_ÖNPREM", "tab\there"])
def test_volume_id_rejected_naming_the_key(volid: str) -> None:
    with pytest.raises(UsageError, match=r"^iso\.volume_id: "):
        iso.check_volume_id(volid)


def test_remaster_argv_is_deterministic_and_replays_boot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stage = tmp_path / "stage"
    (stage / "nocloud").mkdir(parents=True)
    (stage / "nocloud" / "user-data").write_text("x")
    argv = [
        str(a)
        for a in iso.remaster_argv(tmp_path / "b.iso", tmp_path / "o.iso", stage, "V", 1700000000)
    ]
    joined = " ".join(argv)
    assert "-boot_image any replay" in joined
    assert "-volid V" in joined
    assert "-preparer_id NODEFORGE REMASTER" in joined  # what xorriso -pvd_info shows
    assert "-volume_date uuid 2023111422132000" in joined  # `date -u -d @1700000000`
    assert "-volume_date all_file_dates set_to_mtime" in joined
    assert f"-map {stage}/nocloud/user-data /nocloud/user-data" in joined
    assert "-hfsplus" not in argv
    again = iso.remaster_argv(tmp_path / "b.iso", tmp_path / "o.iso", stage, "V", 1700000000, True)
    assert [str(a) for a in again][-len(argv) :] != argv and "-hfsplus" in [str(a) for a in again]


# What `xorriso -report_system_area cmd` printed for the stand-in base (xorriso 1.5.4).
REPORT = """\
-volid 'Ubuntu-Server 24.04.3 LTS amd64'
-boot_image any partition_offset=16
-append_partition 2 28732ac11ff8d211ba4b00a0c93ec93b --interval:imported_iso:21084d-25179d::'/b.iso'
-boot_image any appended_part_as=gpt
-boot_image any efi_path='--interval:appended_partition_2_start_5271s_size_4096d:all::'
"""


def test_appended_partitions_read_from_the_replay_report() -> None:
    assert iso.appended_partitions(REPORT) == [
        ("2", "28732ac11ff8d211ba4b00a0c93ec93b", 21084 * 512, 4096 * 512)
    ]
    assert iso.appended_partitions("-volid 'X'\n") == []
    # 2048-byte blocks ("s") count too; anything but a plain interval of the base: no growing
    s_units = "-append_partition 2 0xef --interval:imported_iso:100s-103s::'/b.iso'\n"
    assert iso.appended_partitions(s_units) == [("2", "0xef", 100 * 2048, 4 * 2048)]
    assert iso.appended_partitions("-append_partition 2 0xef /some/esp.img\n") is None


def test_growing_argv_works_on_the_copy_and_reappends_the_esp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stage = tmp_path / "stage"
    (stage / "nocloud").mkdir(parents=True)
    (stage / "nocloud" / "user-data").write_text("x")
    esp = tmp_path / "appended-2.img"
    grow = [("2", "28732ac11ff8d211ba4b00a0c93ec93b", esp)]
    argv = [
        str(a)
        for a in iso.remaster_argv(
            tmp_path / "b.iso", tmp_path / "o.iso", stage, "V", 1700000000, grow=grow
        )
    ]
    joined = " ".join(argv)
    assert f"-dev stdio:{tmp_path}/o.iso" in joined and "-indev" not in argv
    assert f"-boot_image any replay -append_partition 2 {grow[0][1]} {esp}" in joined
    assert f"-map {stage}/nocloud/user-data /nocloud/user-data" in joined


@pytest.mark.parametrize("refuse", [None, errno.EXDEV, errno.ENOSYS])
def test_copy_base_copies_every_byte_with_or_without_copy_file_range(
    tmp_path,
    monkeypatch,
    refuse,  # type: ignore[no-untyped-def]
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src, dst = tmp_path / "base.iso", tmp_path / "out.iso"
    src.write_bytes(data)
    if refuse is not None:

        def no_cfr(*a, **k):  # type: ignore[no-untyped-def]
            raise OSError(refuse, os.strerror(refuse))

        monkeypatch.setattr(iso.os, "copy_file_range", no_cfr)
    iso.copy_base(src, dst)
    assert dst.read_bytes() == data
