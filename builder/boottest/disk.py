"""Boot tests: the stand-in node disk (built and cached), its UEFI/GPT variant, the bare
baseline disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import paths
from builder.errors import BuilderError
from builder.fsutil import atomic_output, atomic_write
from builder.run import require, run
from tests.support import rootfs, standins

from .constants import APPEND, APPEND_UEFI, BUILD_IN_ROOT, FORMAT, REPO_IN_ROOT, ROOTFS_EXTRA, log
from .guest import BOOTCHECK_UNIT, bootcheck_script


# -- cache ----------------------------------------------------------------------------------
def cache_root() -> Path:
    return paths.cache_dir() / "boot-test"


def _hash_tree(h: Any, base: Path, rel: str) -> None:
    root = base / rel
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(base)}\0{p.stat().st_mode & 0o777:o}\0".encode())
            h.update(p.read_bytes())


# -- the stand-in node disk -----------------------------------------------------------------
@dataclass(frozen=True)
class NodeDisk:
    site: str
    qcow2: Path
    kernel: Path
    initrd: Path
    key: str
    kernel_name: str  # e.g. vmlinuz-6.1.0-28-cloud-amd64 (for the UEFI loader)
    initrd_name: str
    cached: bool = False
    seconds: float = 0.0


def disk_key(tarball: Path, tree: Path, versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}|{tarball.name}|{APPEND}\n".encode())
    _hash_tree(h, tree, "files")
    _hash_tree(h, tree, "scripts")
    h.update(json.dumps(versions, sort_keys=True).encode())
    h.update(Path(standins.__file__).read_bytes())
    h.update(bootcheck_script().encode() + BOOTCHECK_UNIT.encode())
    return h.hexdigest()[:20]


def _chroot_provision(root: Path) -> None:
    """Run the real provision.sh in ``root`` (proc mounted in a private mount namespace)."""
    script = (
        'set -e; r="$1"; mount -t proc proc "$r/proc"; '
        'exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root '
        f"LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive bash {BUILD_IN_ROOT}/scripts/provision.sh"
    )
    try:
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", root],
            timeout=900)  # fmt: skip
    except BuilderError as exc:
        raise BuilderError(
            f"provisioning the stand-in node disk failed: {exc.message}",
            hint="the real packer/scripts/*.sh ran in a chroot; see their log above",
        ) from exc


def build_node_disk(
    site: str,
    tree: Path,
    versions: dict[str, str] | None = None,
    *,
    size_gb: int = 4,
    rebuild: bool = False,
) -> NodeDisk:
    """Build (or reuse) the stand-in node disk for a rendered build tree ``tree``."""
    t0 = time.monotonic()
    tarball = rootfs.build_rootfs(ROOTFS_EXTRA)
    versions = versions or dict(standins.DEFAULT_VERSIONS)
    key = disk_key(tarball, tree, versions)
    d = cache_root() / "disk" / f"{site}-{key}"
    info_file = d / "disk.json"
    if info_file.exists() and not rebuild:
        info = json.loads(info_file.read_text())
        return NodeDisk(site, d / "disk.qcow2", d / "vmlinuz", d / "initrd.img", key,
                        info["kernel_name"], info["initrd_name"], True,
                        time.monotonic() - t0)  # fmt: skip
    log.info("building the stand-in node disk for %s (rootfs + real provisioning)…", site)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-disk-", dir=d) as tmp:
        root = rootfs.extract_rootfs(tarball, Path(tmp) / "root")
        standins.build_standin_repo(root / REPO_IN_ROOT.lstrip("/"), **versions)
        build = root / BUILD_IN_ROOT.lstrip("/")
        shutil.copytree(tree / "scripts", build / "scripts")
        shutil.copytree(tree / "files", build / "files")
        fstab = root / "etc/fstab"  # one fstab for both layouts (whole-disk ext4 and GPT)
        fstab.write_text(fstab.read_text().replace("/dev/vda ", "LABEL=root "))
        _chroot_provision(root)
        shutil.rmtree(build, ignore_errors=True)  # cleanup.sh may have emptied /var/tmp
        with contextlib.suppress(FileNotFoundError):
            (root / standins.STANDIN_LOG.lstrip("/")).unlink()
        # the TEST-ONLY check unit
        tdir = root / "usr/lib/nodeforge-test"
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "nodeforge-bootcheck").write_text(bootcheck_script())
        (tdir / "nodeforge-bootcheck").chmod(0o755)
        unit = root / "etc/systemd/system/nodeforge-bootcheck.service"
        unit.write_text(BOOTCHECK_UNIT)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "nodeforge-bootcheck.service"
        if not link.is_symlink():
            link.symlink_to("/etc/systemd/system/nodeforge-bootcheck.service")
        mid = root / "etc/machine-id"
        if mid.exists() and mid.stat().st_size:
            raise BuilderError(f"{site}: provisioning left /etc/machine-id filled in")
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise BuilderError(f"{tarball}: no kernel/initrd in /boot")
        for src, dest in ((kernels[-1], d / "vmlinuz"), (initrds[-1], d / "initrd.img")):
            with atomic_output(dest) as t:
                shutil.copyfile(src, t)
        raw = Path(tmp) / "root.img"
        run(["truncate", "-s", f"{size_gb}G", raw])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, "-E", "root_owner=0:0", raw],
            env={"E2FSPROGS_FAKE_TIME": "0"}, timeout=900)  # fmt: skip
        shutil.rmtree(root)
        with atomic_output(d / "disk.qcow2") as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, t], timeout=900)
    info = {"site": site, "key": key, "kernel_name": kernels[-1].name,
            "initrd_name": initrds[-1].name, "built": int(time.time())}  # fmt: skip
    atomic_write(info_file, json.dumps(info, indent=1) + "\n")
    prune_disks(site, keep=d)
    secs = time.monotonic() - t0
    log.info("stand-in node disk for %s built in %.0f s: %s", site, secs, d / "disk.qcow2")
    return NodeDisk(site, d / "disk.qcow2", d / "vmlinuz", d / "initrd.img", key,
                    info["kernel_name"], info["initrd_name"], False, secs)  # fmt: skip


def prune_disks(site: str, keep: Path, newest: int = 2) -> None:
    """Keep the ``newest`` node disks of ``site`` (every commit renders a new one)."""
    entries = sorted(
        (p for p in keep.parent.glob(f"{site}-*") if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[max(0, newest - 1) :]:
        log.debug("pruning old node disk %s", old)
        shutil.rmtree(old, ignore_errors=True)


ESP_MIB = 32
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "normal", "linux", "search", "search_label",
    "configfile", "echo", "serial", "terminal", "gzio", "efi_gop", "all_video",
)  # fmt: skip


def build_uefi_disk(disk: NodeDisk) -> Path:
    """GPT image for OVMF: ESP (GRUB x86_64-efi, loads the kernel from partition 2) + ext4."""
    out = disk.qcow2.with_name("disk-uefi.qcow2")
    if out.exists():
        return out
    for tool in ("grub-mkimage", "mkfs.vfat", "mcopy", "sfdisk"):
        require(tool)
    log.info("assembling the GPT (UEFI) variant of %s…", disk.qcow2.name)
    with tempfile.TemporaryDirectory(prefix="nf-uefi-", dir=out.parent) as tmp_s:
        tmp = Path(tmp_s)
        cfg = tmp / "grub-embedded.cfg"
        cfg.write_text(
            "serial --unit=0 --speed=115200\n"
            "terminal_input serial console\n"
            "terminal_output serial console\n"
            "search --no-floppy --label root --set=root\n"
            'echo "nodeforge: GRUB (UEFI) loading the kernel from the ext4 partition"\n'
            f"linux /boot/{disk.kernel_name} {APPEND_UEFI}\n"
            f"initrd /boot/{disk.initrd_name}\n"
            "boot\n"
        )
        efi = tmp / "BOOTX64.EFI"
        run(["grub-mkimage", "-O", "x86_64-efi", "-o", efi, "-p", "/EFI/BOOT", "-c", cfg,
             *GRUB_MODULES])  # fmt: skip
        esp = tmp / "esp.img"
        run(["mkfs.vfat", "-C", "-n", "ESP", esp, str(ESP_MIB * 1024)])
        run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"])
        run(["mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"])
        raw_root = tmp / "root.img"
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.qcow2, raw_root], timeout=600)
        root_sectors = raw_root.stat().st_size // 512
        esp_start, esp_sectors = 2048, ESP_MIB * 2048
        root_start = esp_start + esp_sectors
        total = (root_start + root_sectors + 2048) * 512
        gpt = tmp / "gpt.img"
        run(["truncate", "-s", str(total), gpt])
        layout = (
            "label: gpt\n"
            f"start={esp_start}, size={esp_sectors}, "
            'type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"\n'
            f"start={root_start}, size={root_sectors}, "
            'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n'
        )
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", gpt], input=layout)
        run(["dd", f"if={esp}", f"of={gpt}", "bs=512", f"seek={esp_start}", "conv=notrunc",
             "status=none"])  # fmt: skip
        run(["dd", f"if={raw_root}", f"of={gpt}", "bs=1M", f"seek={root_start * 512}",
             "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"], timeout=600)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", gpt, t], timeout=600)
    return out


# -- baseline for the benchmark -------------------------------------------------------------
def build_bare_disk(size_gb: int = 4) -> Path:
    """The same Debian stand-in root as the node disk, WITHOUT our provisioning (cached):
    the baseline a benchmark boots to cloud-init's "finished" marker."""
    tarball = rootfs.build_rootfs(ROOTFS_EXTRA)
    key = hashlib.sha256(f"{FORMAT}|{tarball.name}|{size_gb}".encode()).hexdigest()[:16]
    out = cache_root() / "bare" / f"bare-{key}.qcow2"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-bare-", dir=out.parent) as tmp:
        root = rootfs.extract_rootfs(tarball, Path(tmp) / "root")
        fstab = root / "etc/fstab"
        fstab.write_text(fstab.read_text().replace("/dev/vda ", "LABEL=root "))
        raw = Path(tmp) / "root.img"
        run(["truncate", "-s", f"{size_gb}G", raw])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, "-E", "root_owner=0:0", raw],
            env={"E2FSPROGS_FAKE_TIME": "0"}, timeout=900)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, t], timeout=900)
    return out
