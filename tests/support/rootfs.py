"""A Debian bookworm root and a bootable qcow2 made from it: the STAND-IN for Ubuntu.

Ubuntu's cloud images and archive are out of reach on our machines, so tests use a Debian
root built with ``mmdebstrap`` (Debian's archive is reachable) with the pieces a node image
has: kernel, systemd, cloud-init, python3, openssh, curl, gnupg — and, like the Ubuntu cloud
image as far as UPSTREAM.md can tell, not wireguard-tools: provisioning installs it.

- ``build_rootfs()`` → a cached tarball of that root (the chroot provisioning test extracts
  it and runs the real provisioning scripts inside);
- ``build_base_image()`` → a cached qcow2 standing in for the Ubuntu cloud image (the Packer
  qemu build test and the QEMU boot tests start from it).

Disk layout (documented choice): the qcow2 holds one ext4 filesystem *without* a partition
table (``mkfs.ext4 -d``, no loop devices or root mounts needed) and is booted by **direct
kernel boot**: the kernel and initrd are kept beside it and QEMU gets ``-kernel``,
``-initrd`` and ``-append "root=/dev/vda …"`` (see ``BaseImage.qemu_args``). Debian's cloud
kernel has virtio drivers; the NoCloud seed (label ``cidata``) is attached as an IDE CD-ROM
on the default ``pc`` machine.

Everything is cached under ``$XDG_CACHE_HOME/nodeforge`` (``~/.cache/nodeforge``; override
with ``BUILDER_CACHE_DIR``), keyed by a hash of the inputs, and written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError
from builder.fsutil import atomic_output
from builder.paths import cache_dir
from builder.run import run

log = logging.getLogger("builder.rootfs")

FORMAT = 3  # bump when the recipe below changes in a way the inputs do not show
SUITE = "bookworm"
PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "systemd-timesyncd",
    "cloud-init",
    "python3",
    "openssh-server",
    "sudo",
    "iproute2",
    "curl",
    "gnupg",
    "ca-certificates",
    "netbase",
    "kmod",
    "tzdata",
)
# no_timer_check: skip the kernel's boot-time test of the timer interrupt (x86 kernel
# parameter, "x86_64: Add option to disable timer check", linux 14d98cad, 2005), which
# a TCG guest on a loaded host fails ("IO-APIC + timer doesn't work!" panic, seen
# 2026-11-30 with 8 helpers on 2 cores)
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=1 no_timer_check"

_NETWORK = """[Match]
Name=eth* en*

[Network]
DHCP=yes
"""


def mirror() -> str:
    return os.environ.get("BUILDER_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def build_rootfs(extra_packages: tuple[str, ...] = ()) -> Path:
    """Return a cached tarball of the Debian stand-in root (built with mmdebstrap once)."""
    pkgs = tuple(sorted(set(PACKAGES) | set(extra_packages)))
    key = _key(FORMAT, SUITE, mirror(), pkgs)
    out = cache_dir() / "rootfs" / f"{SUITE}-{key}.tar"
    if out.exists():
        log.debug("rootfs cache hit: %s", out)
        return out
    log.info("building the Debian %s stand-in root with mmdebstrap (about a minute)…", SUITE)
    with atomic_output(out) as tmp:
        tar = tmp.with_name(tmp.name + ".tar")  # mmdebstrap picks the format by extension
        try:
            run(
                [
                    "mmdebstrap",
                    "--variant=apt",
                    "--mode=root" if os.geteuid() == 0 else "--mode=unshare",
                    "--include=" + ",".join(pkgs),
                    # keep the package lists: the image then installs offline from our repos
                    "--skip=cleanup/apt/lists",
                    "--customize-hook=" + _customize_hook(),
                    SUITE,
                    tar,
                    mirror(),
                ],
                timeout=1800,
            )
        except BuilderError as exc:
            tar.unlink(missing_ok=True)
            raise BuilderError(
                f"mmdebstrap could not build the {SUITE} root: {exc.message}",
                hint=f"is {mirror()} reachable? (set BUILDER_DEBIAN_MIRROR for a local mirror)",
            ) from exc
        os.replace(tar, tmp)
    return out


def _customize_hook() -> str:
    # runs on the host with "$1" = the root: the Debian counterpart of an Ubuntu cloud image
    net = _NETWORK.replace("\n", "\\n")
    return (
        'set -e; r="$1"; '
        'echo nodeforge-base >"$r/etc/hostname"; '
        'printf "LANG=C.UTF-8\\n" >"$r/etc/default/locale"; '
        'printf "/dev/vda / ext4 defaults,errors=remount-ro 0 1\\n" >"$r/etc/fstab"; '
        'mkdir -p "$r/etc/systemd/network"; '
        f'printf "{net}" >"$r/etc/systemd/network/10-dhcp.network"; '
        'chroot "$r" systemctl enable systemd-networkd.service; '
        'printf "datasource_list: [ NoCloud, None ]\\n" '
        '>"$r/etc/cloud/cloud.cfg.d/90-nodeforge-standin.cfg"; '
        ': >"$r/etc/machine-id"'
    )


# what a chroot (no boot) does not need: kernel, modules, docs
CHROOT_EXCLUDES = (
    "./boot/*",
    "./usr/lib/modules/*",
    "./usr/share/doc/*",
    "./usr/share/man/*",
    "./usr/share/locale/*",
)


def extract_rootfs(tarball: Path, dest: Path, exclude: tuple[str, ...] = ()) -> Path:
    """Extract a cached root tarball into ``dest`` (must be empty or missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    excludes = [f"--exclude={pattern}" for pattern in exclude]
    run(["tar", "-C", dest, "--numeric-owner", *excludes, "-xpf", tarball])
    return dest


@dataclass(frozen=True)
class BaseImage:
    """The stand-in for Ubuntu's cloud image: qcow2 + kernel + initrd for direct boot."""

    qcow2: Path
    kernel: Path
    initrd: Path
    append: str = KERNEL_APPEND

    def qemu_args(self) -> list[list[str]]:
        """Direct-kernel-boot arguments (Packer ``qemuargs`` shape)."""
        return [
            ["-kernel", str(self.kernel)],
            ["-initrd", str(self.initrd)],
            ["-append", self.append],
        ]


def build_base_image(size_gb: int = 4) -> BaseImage:
    """Return the cached stand-in cloud image (built from ``build_rootfs()`` once)."""
    tarball = build_rootfs()
    key = _key(FORMAT, tarball.name, size_gb)
    d = cache_dir() / "base-image" / key
    img = BaseImage(d / "base.qcow2", d / "vmlinuz", d / "initrd.img")
    if img.qcow2.exists() and img.kernel.exists() and img.initrd.exists():
        return img
    log.info("making the stand-in base qcow2 from %s…", tarball.name)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-base-", dir=d) as tmp:
        root = extract_rootfs(tarball, Path(tmp) / "root")
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise BuilderError(f"{tarball}: no kernel/initrd in /boot", hint="rebuild the cache")
        with atomic_output(img.kernel) as t:
            shutil.copyfile(kernels[-1], t)
        with atomic_output(img.initrd) as t:
            shutil.copyfile(initrds[-1], t)
        raw = Path(tmp) / "root.img"
        run(["truncate", "-s", f"{size_gb}G", raw])
        run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, "-E", "root_owner=0:0", raw],
            env={"E2FSPROGS_FAKE_TIME": "0"},
        )
        with atomic_output(img.qcow2) as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, t])
    return img


def tar_member_names(tarball: Path) -> list[str]:
    with contextlib.closing(tarfile.open(tarball)) as tf:
        return tf.getnames()
