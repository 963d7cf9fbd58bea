"""STAND-IN for the Ubuntu 24.04 live-server ISO (no Ubuntu media is reachable here).

``build_fixture()`` makes, with the real tools Ubuntu's own ISO build uses (xorriso,
grub-mkimage, mkfs.vfat + mtools), an ISO with the same boot structure as
``ubuntu-24.04-live-server-amd64.iso``:

- GRUB BIOS El Torito image ``/boot/grub/i386-pc/eltorito.img`` (grub-mkimage
  ``i386-pc-eltorito``, i.e. cdboot.img + core.img) with a boot info table;
- GRUB's hybrid MBR (``boot_hybrid.img``, patched by ``--grub2-boot-info``) so the same
  file boots from a USB stick / hard disk on BIOS;
- a protective MBR + GPT, and an appended EFI system partition (``mkfs.vfat -C`` + mtools)
  holding ``EFI/boot/bootx64.efi`` (grub-mkimage ``x86_64-efi``), also the El Torito EFI
  entry, exactly like Ubuntu's ``-append_partition 2 … -appended_part_as_gpt``;
- ``/boot/grub/grub.cfg`` and ``loopback.cfg`` in Ubuntu's menu format, ``/.disk/info``,
  ``/md5sum.txt``, ``/casper/vmlinuz`` and ``/casper/initrd``.

The kernel is a real Debian kernel (``apt-get download linux-image-*-amd64``, cached). The
"installer" is a small busybox initramfs standing in for subiquity: it loads the storage
modules from the same kernel package, finds the boot medium (the ISO 9660 volume holding
``/.disk/info``) and prints to the serial console, one ``FIXTURE-…:`` line each: its kernel
command line, the medium and its volume label, the seed files under ``/nocloud`` and the
sha256 of ``/nocloud/user-data``; then it powers off. ``FIXTURE-DONE`` ends a run,
``FIXTURE-ERROR`` reports a failure.

It is also the STAND-IN for subiquity + curtin when the medium carries a stand-in installed
root (``/casper/standin-root.img.gz`` + ``/casper/standin_installer.py``, added by
standin_iso.py): with ``autoinstall`` on its command line and a blank virtio disk it writes
that root file system to the disk (curtin's extract step; one whole-disk ext4, no partitions
and no boot loader, as the stand-in node disks of nodedisk.py: the installed disk boots by
direct kernel boot), runs standin_installer.py with the installed root's ``python3`` for
subiquity's cloud-init files, then the autoinstall ``late-commands`` from its busybox shell
(the installer environment: ``/target``, ``/cdrom``, ``TARGET_MOUNT_POINT``) with the
``curtin in-target`` stand-in (a chroot with /dev /proc /sys /run bound), prints
``STANDIN-INSTALL-DONE`` and reboots (``STANDIN-INSTALL-FAILED: …`` and a power-off on error).

The result is cached under ``$XDG_CACHE_HOME/nodeforge/test-fixtures/<hash>/`` keyed by a
hash of this file, so it is built once (~20 s) and reused by later runs.

Run as a script to print the cached fixture path (building it if needed)::

    python -m tests.support.ubuntu_like_iso [--pad-to BYTES OUT]
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from builder.run import run
from tests.support.standin_installer import CURTIN

FIXTURE_VOLID = "Ubuntu-Server 24.04.3 LTS amd64"
KERNEL_META = "linux-image-amd64"
# grub.cfg timeout in the fixture. Ubuntu ships 30; we keep it short so the control boot of
# the unmodified fixture stays quick under TCG. The remaster must replace it either way.
FIXTURE_GRUB_TIMEOUT = 3

# Modules the stand-in installer needs to see the medium as CD-ROM (IDE on -M pc), AHCI,
# virtio, or a USB stick (xHCI/EHCI + usb-storage); dependencies are resolved from modinfo.
WANTED_MODULES = [
    "isofs",
    "sr_mod",
    "sd_mod",
    "ata_piix",
    "ata_generic",
    "ahci",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "xhci_pci",
    "ehci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    # the stand-in installer mounts the installed root (ext4 with metadata_csum: crc32c)
    "crc32c_generic",
    "ext4",
]

# `no_timer_check` (after `---`, like console=ttyS0: the fixture's, not Ubuntu's): on a
# starved TCG host the Debian kernel's IO-APIC timer check can miss its ticks and panic
# ("IO-APIC + timer doesn't work!"), seen under OVMF at load average ~35
GRUB_CFG = f"""\
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout={FIXTURE_GRUB_TIMEOUT}

loadfont unicode

set menu_color_normal=white/black
set menu_color_highlight=black/light-gray

menuentry "Try or Install Ubuntu Server" {{
\tset gfxpayload=keep
\tlinux\t/casper/vmlinuz  --- console=ttyS0 no_timer_check
\tinitrd\t/casper/initrd
}}
menuentry "Ubuntu Server with the HWE kernel" {{
\tset gfxpayload=keep
\tlinux\t/casper/hwe-vmlinuz  --- console=ttyS0 no_timer_check
\tinitrd\t/casper/hwe-initrd
}}
grub_platform
if [ "$grub_platform" = "efi" ]; then
menuentry 'Boot from next volume' {{
\texit 1
}}
menuentry 'UEFI Firmware Settings' {{
\tfwsetup
}}
else
menuentry 'Test memory' {{
\tlinux16 /boot/memtest86+x64.bin
}}
fi
"""

LOOPBACK_CFG = """\
menuentry "Try or Install Ubuntu Server" {
\tset gfxpayload=keep
\tlinux\t/casper/vmlinuz  iso-scan/filename=${iso_path} --- console=ttyS0 no_timer_check
\tinitrd\t/casper/initrd
}
menuentry "Ubuntu Server with the HWE kernel" {
\tset gfxpayload=keep
\tlinux\t/casper/hwe-vmlinuz  iso-scan/filename=${iso_path} --- console=ttyS0 no_timer_check
\tinitrd\t/casper/hwe-initrd
}
"""

# Early config embedded in both GRUB images: find our medium whichever way it was booted.
EARLY_CFG = """\
search --no-floppy --set=root --file /.disk/info
set prefix=($root)/boot/grub
"""

GRUB_MODULES_COMMON = [
    "normal",
    "configfile",
    "search",
    "search_fs_file",
    "iso9660",
    "part_msdos",
    "part_gpt",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "ls",
    "cat",
    "halt",
    "reboot",
]
GRUB_MODULES_BIOS = [*GRUB_MODULES_COMMON, "biosdisk"]
GRUB_MODULES_EFI = [*GRUB_MODULES_COMMON, "fat", "efi_gop", "all_video"]

INIT = r"""#!/bin/busybox sh
# STAND-IN installer (nodeforge test fixture): reports what the real installer would see.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /cdrom /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# what udev/systemd give a real installer's /dev (bash process substitution needs /dev/fd)
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
OUT=/dev/ttyS0
say() { echo "$*" > $OUT; }
say "FIXTURE-START"
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
say "FIXTURE-CMDLINE: $(cat /proc/cmdline)"
found=""
i=0
while [ $i -lt 60 ] && [ -z "$found" ]; do
  for dev in /dev/sr* /dev/vd* /dev/sd*; do
    [ -b "$dev" ] || continue
    magic=$(dd if=$dev bs=1 skip=32769 count=5 2>/dev/null)
    [ "$magic" = "CD001" ] || continue
    mount -t iso9660 -o ro $dev /cdrom 2>/dev/null || continue
    if [ -f /cdrom/.disk/info ]; then found=$dev; break; fi
    umount /cdrom
  done
  [ -n "$found" ] || { sleep 0.5; i=$((i+1)); }
done
if [ -z "$found" ]; then
  say "FIXTURE-ERROR: boot medium not found"
  ls /dev > $OUT
  poweroff -f
fi
label=$(dd if=$found bs=1 skip=32808 count=32 2>/dev/null | sed 's/ *$//')
say "FIXTURE-MEDIUM: $found label=$label"
say "FIXTURE-INFO: $(cat /cdrom/.disk/info)"
if [ -d /cdrom/nocloud ]; then
  say "FIXTURE-SEED: $(cd /cdrom/nocloud && ls | tr '\n' ' ')"
else
  say "FIXTURE-SEED: none"
fi
if [ -f /cdrom/nocloud/user-data ]; then
  say "FIXTURE-USERDATA-SHA256: $(sha256sum /cdrom/nocloud/user-data | cut -d' ' -f1)"
else
  say "FIXTURE-USERDATA-SHA256: none"
fi
say "FIXTURE-DONE"
# --- STAND-IN subiquity + curtin ---------------------------------------------------------
# With `autoinstall` on the command line, a stand-in installed root on the medium
# (/casper/standin-root.img.gz, standing in for the squashfs curtin extracts) and a blank
# virtio disk: install as subiquity + curtin do (tests/support/standin_installer.py, run
# with the installed root's python3), then reboot as the autoinstall's `shutdown: reboot`
# says (QEMU's -no-reboot turns that into an exit).
fail() { say "STANDIN-INSTALL-FAILED: $*"; sync; poweroff -f; }
blank() { [ -z "$(dd if=$1 bs=65536 count=16 2>/dev/null | tr -d '\000' | head -c 1)" ]; }
if grep -qw autoinstall /proc/cmdline && [ -f /cdrom/casper/standin-root.img.gz ]; then
  disk=""
  for d in /dev/vd?; do
    [ -b "$d" ] && blank "$d" && { disk=$d; break; }
  done
  [ -n "$disk" ] || fail "no blank virtio disk to install to"
  say "STANDIN-INSTALL: installing to $disk"
  gunzip -c /cdrom/casper/standin-root.img.gz | dd of=$disk bs=1M conv=fsync 2>/dev/null \
    || fail "writing the root file system"
  mkdir -p /target /run
  mount -t ext4 $disk /target || fail "cannot mount the installed root"
  cp /cdrom/casper/standin_installer.py /target/tmp/nf-installer.py
  cp /cdrom/nocloud/user-data /target/tmp/nf-user-data
  chroot /target /usr/bin/python3 /tmp/nf-installer.py files /tmp/nf-user-data / > $OUT 2>&1 \
    || fail "writing subiquity's files"
  chroot /target /usr/bin/python3 /tmp/nf-installer.py late /tmp/nf-user-data \
    > /tmp/late-commands.sh || fail "reading the late-commands"
  rm -f /target/tmp/nf-installer.py /target/tmp/nf-user-data
  say "STANDIN-INSTALL: late-commands"
  (cd / && PATH=/standin/bin:$PATH sh /tmp/late-commands.sh) > $OUT 2>&1 || fail "late-commands"
  rm -f /target/var/log/nodeforge-standins.log  # test support, as nodedisk.py does
  # what a package script left running in the target (curtin kills it too) must not keep
  # the root busy
  for p in /proc/[0-9]*; do
    case "$(readlink $p/root)" in /target*) kill -9 ${p#/proc/} 2>/dev/null ;; esac
  done
  sleep 1
  umount /target || fail "cannot unmount the installed root"
  sync
  say "STANDIN-INSTALL-DONE"
  umount /cdrom
  reboot -f
fi
umount /cdrom
sync
poweroff -f
"""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nodeforge" / "test-fixtures"


def fixture_key() -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(CURTIN.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_fixture(cache: Path | None = None) -> Path:
    """Return the path of the cached stand-in base ISO, building it on first use."""
    root = cache or cache_root()
    out_dir = root / fixture_key()
    iso = out_dir / "ubuntu-like-live-server-amd64.iso"
    with _locked(root / ".lock"):
        if iso.is_file():
            return iso
        mods = hashlib.sha256(" ".join(WANTED_MODULES).encode()).hexdigest()[:8]
        kernel_dir = _kernel(root / f"kernel-{mods}")
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            part = Path(tmp) / iso.name
            _build_iso(kernel_dir, Path(tmp), part)
            os.replace(part, iso)
    return iso


def pad_copy(src: Path, dst: Path, size: int) -> Path:
    """A copy of the fixture grown to ``size`` bytes by a big file (/casper/filesystem.pad).

    Used by the benchmark: a base ISO of realistic size (the real one is ~3 GiB).
    """
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pad = Path(tmp) / "pad"
        cur = src.stat().st_size
        with open(pad, "wb") as fh:
            block = hashlib.sha256(b"pad").digest() * (1 << 15)  # 1 MiB, incompressible-ish
            left = max(size - cur, 0)
            while left > 0:
                n = min(left, len(block))
                fh.write(block[:n])
                left -= n
        run(
            [
                "xorriso",
                "-indev",
                src,
                "-outdev",
                dst,
                "-boot_image",
                "any",
                "replay",
                "-map",
                pad,
                "/casper/filesystem.pad",
            ]
        )
    return dst


# --- kernel -----------------------------------------------------------------------------


def _kernel(cache: Path) -> Path:
    """Extract the current Debian amd64 kernel (vmlinuz + the modules we need), cached."""
    done = cache / "done"
    if done.is_file():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        t = Path(tmp)
        meta = _apt_download(KERNEL_META, t)
        depends = run(["dpkg-deb", "-f", meta, "Depends"]).stdout.strip()
        pkg = depends.split(",")[0].split()[0]
        deb = _apt_download(pkg, t)
        x = t / "x"
        run(["dpkg-deb", "-x", deb, x])
        vmlinuz = next((x / "boot").glob("vmlinuz-*"))
        moddir = next((x / "lib" / "modules").iterdir())
        mods = _resolve_modules(moddir)
        lib = cache / "lib"
        shutil.rmtree(lib, ignore_errors=True)
        lib.mkdir()
        order = []
        for name, path in mods:
            shutil.copyfile(path, lib / f"{name}.ko")
            order.append(name)
        (cache / "modules.order").write_text("\n".join(order) + "\n")
        shutil.copyfile(vmlinuz, cache / "vmlinuz")
        (cache / "kernel-package").write_text(pkg + "\n")
    done.write_text("ok\n")
    return cache


def _apt_download(pkg: str, dest: Path) -> Path:
    for attempt in range(2):
        proc = run(["apt-get", "download", pkg], cwd=dest, check=False)
        debs = sorted(dest.glob(f"{pkg}_*.deb"))
        if proc.returncode == 0 and debs:
            return debs[-1]
        if attempt == 0:
            run(["apt-get", "update", "-qq"], check=False)
    raise RuntimeError(f"apt-get download {pkg} failed: {proc.stderr}")


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    idx = data.find(b"\0depends=")
    if idx < 0:
        return []
    end = data.index(b"\0", idx + 1)
    val = data[idx + len(b"\0depends=") : end].decode()
    return [d for d in val.split(",") if d]


def _resolve_modules(moddir: Path) -> list[tuple[str, Path]]:
    """Wanted modules and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko"):
        index[ko.name[:-3].replace("-", "_")] = ko
    ordered: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:  # built into the kernel
            return
        for dep in _modinfo_depends(path):
            visit(dep)
        ordered.append((name, path))

    for m in WANTED_MODULES:
        visit(m)
    return ordered


# --- initramfs --------------------------------------------------------------------------


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (deterministic: fixed mtimes, inode numbers by order)."""
    buf = io.BytesIO()

    def pad4() -> None:
        buf.write(b"\0" * (-buf.tell() % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        nm = name.encode() + b"\0"
        nlink = 2 if mode & 0o040000 else 1
        hdr = "070701" + "".join(
            f"{v:08X}" for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(nm), 0)
        )
        buf.write(hdr.encode() + nm)
        pad4()
        buf.write(data)
        pad4()
    return buf.getvalue()


def _initrd(kernel_dir: Path) -> bytes:
    d, f, x = 0o040755, 0o100644, 0o100755
    entries: list[tuple[str, int, bytes]] = [
        ("bin", d, b""),
        ("dev", d, b""),
        ("etc", d, b""),
        ("lib", d, b""),
        ("lib/modules", d, b""),
        ("proc", d, b""),
        ("sys", d, b""),
        ("cdrom", d, b""),
        ("tmp", d, b""),
        ("run", d, b""),
        ("standin", d, b""),
        ("standin/bin", d, b""),
        ("standin/bin/curtin", x, CURTIN.encode()),
        ("bin/busybox", x, Path(shutil.which("busybox") or "/bin/busybox").read_bytes()),
        ("bin/sh", 0o120777, b"busybox"),
        ("init", x, INIT.encode()),
        ("etc/modules.order", f, (kernel_dir / "modules.order").read_bytes()),
    ]
    for ko in sorted((kernel_dir / "lib").iterdir()):
        entries.append((f"lib/modules/{ko.name}", f, ko.read_bytes()))
    raw = _newc(entries)
    return gzip.compress(raw, compresslevel=6, mtime=0)


# --- the ISO ----------------------------------------------------------------------------


def _md5sums(tree: Path) -> str:
    lines = []
    for p in sorted(tree.rglob("*")):
        if p.is_file() and p.name != "md5sum.txt" and not p.is_symlink():
            rel = p.relative_to(tree).as_posix()
            if rel.startswith("boot/grub/i386-pc/") or rel == "boot.catalog":
                continue
            lines.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  ./{rel}")
    return "\n".join(lines) + "\n"


def _build_iso(kernel_dir: Path, tmp: Path, out: Path) -> None:
    tree = tmp / "tree"
    (tree / "boot/grub/i386-pc").mkdir(parents=True)
    (tree / "casper").mkdir()
    (tree / ".disk").mkdir()
    (tree / ".disk/info").write_text(
        'Ubuntu-Server 24.04.3 LTS "Noble Numbat" - Release amd64 (STAND-IN fixture)\n'
    )
    (tree / "boot/grub/grub.cfg").write_text(GRUB_CFG)
    (tree / "boot/grub/loopback.cfg").write_text(LOOPBACK_CFG)
    shutil.copyfile(kernel_dir / "vmlinuz", tree / "casper/vmlinuz")
    (tree / "casper/initrd").write_bytes(_initrd(kernel_dir))
    early = tmp / "early.cfg"
    early.write_text(EARLY_CFG)
    run(
        [
            "grub-mkimage",
            "-O",
            "i386-pc-eltorito",
            "-p",
            "/boot/grub",
            "-c",
            early,
            "-o",
            tree / "boot/grub/i386-pc/eltorito.img",
            *GRUB_MODULES_BIOS,
        ]
    )
    bootx64 = tmp / "bootx64.efi"
    run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-p",
            "/boot/grub",
            "-c",
            early,
            "-o",
            bootx64,
            *GRUB_MODULES_EFI,
        ]
    )
    (tree / "md5sum.txt").write_text(_md5sums(tree))
    efi = tmp / "efi.img"
    size_kib = (bootx64.stat().st_size // 1024) + 1024
    size_kib += -size_kib % 1024
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mkfs.vfat", "-C", "-n", "ESP", "-i", "4E4F4445", efi, str(size_kib)])
    run(["mmd", "-i", efi, "::/EFI", "::/EFI/boot"], env=env)
    run(["mcopy", "-i", efi, bootx64, "::/EFI/boot/bootx64.efi"], env=env)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "1700000000")
    run(
        [
            "xorriso",
            "-as",
            "mkisofs",
            "-r",
            "-V",
            FIXTURE_VOLID,
            "-o",
            out,
            "--grub2-mbr",
            "/usr/lib/grub/i386-pc/boot_hybrid.img",
            "--protective-msdos-label",
            "-partition_cyl_align",
            "off",
            "-partition_offset",
            "16",
            "--mbr-force-bootable",
            "-append_partition",
            "2",
            "28732ac11ff8d211ba4b00a0c93ec93b",
            efi,
            "-appended_part_as_gpt",
            "-iso_mbr_part_type",
            "a2a0d0ebe5b9334487c068b6b72699c7",
            "-c",
            "/boot.catalog",
            "-b",
            "/boot/grub/i386-pc/eltorito.img",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "--grub2-boot-info",
            "-eltorito-alt-boot",
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
            tree,
        ],
        env={"SOURCE_DATE_EPOCH": epoch},
    )


def main(argv: list[str]) -> int:
    iso = build_fixture()
    if len(argv) == 3 and argv[0] == "--pad-to":
        out = pad_copy(iso, Path(argv[2]), int(argv[1]))
        print(out)
    else:
        print(iso)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
