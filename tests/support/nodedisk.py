"""The STAND-IN node disk of the boot tests (``python -m tests.support.nodedisk SITE``).

Ubuntu's images are out of reach on our machines, so the boot tests boot a disk made here:

1. the Debian bookworm root from ``rootfs.build_rootfs()`` — a STAND-IN for the installed
   Ubuntu system — provisioned in a chroot by OUR REAL scripts (``scripts/provision.sh``
   of the site's rendered build tree, with its ``provision.env``) against the STAND-IN apt
   repository of ``standins.build_standin_repo()`` (``file://`` URLs inside the root);
2. plus the TEST-ONLY check program (``bootcheck.install``): once the node is joined (or
   failed for good) it prints one report line on the serial console and powers off;
3. the root becomes an ext4 image with ``mkfs.ext4 -d`` (no mounts) → qcow2, booted by
   direct kernel boot (``root=/dev/vda``) on virtio; ``uefi=True`` assembles a GPT disk
   instead (ESP from ``mkfs.vfat -C`` + mtools holding a ``grub-mkimage`` x86_64-efi loader,
   the same ext4 as partition 2; ``sfdisk`` + ``dd``, no loop devices) for OVMF.

The site is rendered for the lab hub (``builder.boottest.prepare``: the same cached hub
identity ``builder boot-test`` uses) with the stand-in repository on top. Disks are cached
under ``<cache>/boot-test/disk``, keyed by the hash of everything that goes into them.
The product never sees any of this: ``builder boot-test SITE --image DISK`` boots the disk
like any other image (``boot_args`` gives the options).

    python -m tests.support.nodedisk aws            # prints the disk's path
    python -m tests.support.nodedisk onprem --uefi --args   # prints boot-test options
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.boottest import BootImage, HubIdentity, boot_image, hub_overrides, prepare
from builder.boottest.constants import APPEND
from builder.boottest.lab import cache_root
from builder.errors import BuilderError
from builder.fsutil import atomic_output, atomic_write
from builder.run import require, run
from builder.site.credentials import salt_file
from builder.site.profile import default_profiles_dir, load_profile
from builder.site.render import render_site
from tests.support import bootcheck, rootfs, standins
from tests.support.reportchecks import Expect, expectations

log = logging.getLogger("tests.support.nodedisk")

FORMAT = 2  # bump when the disk recipe changes in a way the inputs do not show
REPO_IN_ROOT = "/srv/nodeforge-standin-repo"
BUILD_IN_ROOT = "/var/tmp/nodeforge-build"
# an Ubuntu cloud image has e2fsprogs (cloud-init's resizefs needs resize2fs) and netplan
# (cloud-init renders network config through it; Debian's cloud-init would otherwise use
# its networkd renderer, which cannot match interfaces by a name pattern as netplan does)
ROOTFS_EXTRA = ("e2fsprogs", "netplan.io")
# the stand-in root's own DHCP config (rootfs.py) must not shadow what cloud-init renders:
# networkd takes the first .network file by name, netplan writes 10-netplan-*.network
STANDIN_DHCP = ("etc/systemd/network/10-dhcp.network", "etc/systemd/network/90-dhcp.network")
# no_timer_check: skip the kernel's boot-time test of the timer interrupt (x86 kernel
# parameter, "x86_64: Add option to disable timer check", linux 14d98cad, 2005), which
# a TCG guest on a loaded host fails ("IO-APIC + timer doesn't work!" panic, seen
# 2026-11-30 with 8 helpers on 2 cores)
APPEND_UEFI = "root=/dev/vda2 rw console=ttyS0 net.ifnames=0 systemd.show_status=1 no_timer_check"
_PREP_LOCK = threading.Lock()


def repo_overrides(gpu: bool) -> list[str]:
    """``--set`` overrides pointing the package sources at the stand-in repository."""
    url = f"file://{REPO_IN_ROOT}/"
    key = f"file://{REPO_IN_ROOT}/Release.key"
    out = [
        f"kubernetes.apt.url={url}",
        f"kubernetes.apt.key_url={key}",
        f"crio.apt.url={url}",
        f"crio.apt.key_url={key}",
    ]
    if gpu:
        out += [f"gpu.nvidia.apt.url={url}", f"gpu.nvidia.apt.key_url={key}"]
    return out


def standin_versions(profile: Any) -> dict[str, str]:
    """Stand-in package versions matching what the profile pins (Debian revisions as the
    real repositories use them); the repository adds newer decoys of each."""
    k8s = profile.spec.kubernetes.version
    crio = profile.spec.crio.version
    vers = {
        "kubernetes": f"{k8s}-1.1",
        "crio": f"{crio}.0-1.1" if crio.count(".") == 1 else f"{crio}-1.1",
    }
    if profile.spec.gpu.enabled:
        branch = profile.spec.gpu.nvidia.driver_branch
        vers["nvidia_driver_branch"] = branch
        vers["nvidia_driver"] = f"{branch}.195.03-0ubuntu0.24.04.1"
        vers["nvidia_toolkit"] = f"{profile.spec.gpu.nvidia.container_toolkit_version}-1"
    return {**standins.DEFAULT_VERSIONS, **vers}


# -- cache ----------------------------------------------------------------------------------
# A stand-in disk does not carry the builder's commit and build time: with them in it, every
# commit made new disks (a 529 s setup in the clean-clone CI run of 2026-11-30) though
# nothing a boot test looks at had changed. ``pin_build_identity`` sets them to these fixed
# values in the tree a disk is made from, so the disk is a function of its cache key.
STANDIN_COMMIT = "standin-disk"
STANDIN_BUILD_TIME = 1764460800  # 2025-11-30T00:00:00Z: before any clock a test guest reads
_PINNED = {"NF_BUILDER_COMMIT": STANDIN_COMMIT, "NF_BUILD_TIME": str(STANDIN_BUILD_TIME)}


def pin_build_identity(tree: Path) -> list[Path]:
    """Set the builder commit and build time in a rendered tree (every ``provision.env`` and
    ``etc/nodeforge/node.json``, the files that carry them into a node) to the stand-in
    values; returns the files changed. Raises when the tree has none of them (the render
    moved them: the disk key would silently depend on the commit again)."""
    changed: list[Path] = []
    for env in sorted(tree.rglob("provision.env")):
        lines = env.read_text().splitlines(keepends=True)
        out = []
        for line in lines:
            name = line.split("=", 1)[0]
            out.append(f"{name}={_PINNED[name]}\n" if name in _PINNED else line)
        if out != lines:
            env.write_text("".join(out))
            changed.append(env)
    for node in sorted(tree.rglob("etc/nodeforge/node.json")):
        text = node.read_text()
        cfg = json.loads(text)
        if "build_time" in cfg:
            cfg["build_time"] = STANDIN_BUILD_TIME
            node.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            changed.append(node)
    if not changed:
        raise BuilderError(f"{tree}: no provision.env or node.json with a build identity")
    return changed


# A site's crypt salt is random, made once per profiles directory (builder/site/credentials.py)
# and not in git: a clean clone made a new one, and with a password set the rendered tree
# (the autoinstall's password hash, in the installed disk and its key) differed per clone.
# The stand-in disk is rendered from a copy of the profiles with this fixed salt instead.
STANDIN_SALT = "TESTONLYstandin0"  # 16 characters of ./0-9A-Za-z; TEST-ONLY, never a real site


def standin_profiles(profiles_dir: Path | None, workdir: Path) -> Path:
    """A copy of ``profiles_dir`` (default: the one ``builder`` would use) in ``workdir``
    whose ``.secrets`` holds only the TEST-ONLY ``STANDIN_SALT`` for every site: nothing of
    the checkout's own generated secrets goes into a stand-in disk."""
    src = profiles_dir or default_profiles_dir()
    out = workdir / "profiles"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns(".secrets"), dirs_exist_ok=True)
    (out / ".secrets").mkdir(mode=0o700, exist_ok=True)
    for site in sorted(out.glob("*.yaml")):
        salt = out / ".secrets" / f"{site.stem}.salt"
        atomic_write(salt, STANDIN_SALT + "\n", mode=0o600)
    return out


def render_standin(
    site: str, workdir: Path, profiles_dir: Path | None = None, overrides: Sequence[str] = ()
) -> tuple[Any, Any, Path]:
    """The site rendered for the lab hub with the stand-in repository (lab, profile, tree),
    from ``standin_profiles`` and with ``pin_build_identity``: what a disk is made from."""
    profiles = standin_profiles(profiles_dir, workdir)
    with _PREP_LOCK:  # shared cache entries: one builder at a time in this process
        lab = prepare(site, workdir / "lab", profiles_dir=profiles, overrides=overrides)
    extra = repo_overrides(lab.profile.spec.gpu.enabled)
    # the lab's hub settings first, the stand-in repository, then the caller's overrides
    profile = load_profile(site, profiles, [*hub_overrides(lab.ident), *extra, *overrides])
    if salt_file(profile) != profiles / ".secrets" / f"{site}.salt":
        raise BuilderError(f"{site}: the salt is not read from {profiles}/.secrets")
    tree = workdir / "build" / site
    render_site(profile, tree)
    pin_build_identity(tree)  # the disk is made from this tree: not from this commit
    return lab, profile, tree


def feed_standin_sources(h: Any) -> None:
    """Feed what the stand-in packages are made from (standins.py and standin_programs/)
    into the hash ``h``: a changed program must not reuse a cached disk or repository."""
    h.update(Path(standins.__file__).read_bytes())
    programs = Path(standins.__file__).with_name("standin_programs")
    for prog in sorted(
        p for p in programs.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ):
        h.update(prog.relative_to(programs).as_posix().encode() + b"\0" + prog.read_bytes())


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
    kernel: Path | None  # None: the disk has its own boot loader (baseimage.py)
    initrd: Path | None
    key: str
    kernel_name: str  # e.g. vmlinuz-6.1.0-28-cloud-amd64 (for the UEFI loader)
    initrd_name: str
    cached: bool = False
    seconds: float = 0.0


def disk_key(tarball: Path, tree: Path | None, versions: dict[str, str], kind: str = "disk") -> str:
    """The hash of everything that goes into a disk: ``tree`` None for a disk that takes
    nothing from the rendered tree (the ISO path's root before installation)."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}|{tarball.name}|{APPEND}\n".encode())
    if kind == "installed" and tree is not None:  # the ISO payload and the installer step
        h.update(kind.encode())
        _hash_tree(h, tree, "iso")
        h.update((tree / "cloud-init/autoinstall.yaml").read_bytes())
        h.update(Path(__file__).with_name("installer.py").read_bytes())
        h.update(Path(__file__).with_name("standin_installer.py").read_bytes())
    if tree is not None:
        _hash_tree(h, tree, "files")
        _hash_tree(h, tree, "scripts")
    else:
        h.update(f"{kind}|no tree".encode())
    h.update(json.dumps(versions, sort_keys=True).encode())
    feed_standin_sources(h)
    h.update(bootcheck.digest())
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
    installer: Callable[[Path], None] | None = None,
    kind: str = "disk",
    packages: Sequence[str] = (),
    tree_in_disk: bool = True,
) -> NodeDisk:
    """Build (or reuse) the stand-in node disk for a rendered build tree ``tree``.

    The root is provisioned by ``scripts/provision.sh`` in a chroot (as Packer would), or
    by ``installer(root)`` (the stand-in installer step of the ISO path, installer.py);
    ``kind`` names the recipe in the cache; ``packages`` go into the root beforehand;
    ``tree_in_disk`` False: nothing of ``tree`` goes into the disk (not part of its key)."""
    t0 = time.monotonic()
    tarball = rootfs.build_rootfs((*ROOTFS_EXTRA, *packages))
    versions = versions or dict(standins.DEFAULT_VERSIONS)
    key = disk_key(tarball, tree if tree_in_disk else None, versions, kind)
    d = cache_root() / kind / f"{site}-{key}"
    info_file = d / "disk.json"
    if info_file.exists() and not rebuild:
        os.utime(d)  # in use: prune_disks keeps what was used lately
        info = json.loads(info_file.read_text())
        return NodeDisk(site, d / "disk.qcow2", d / "vmlinuz", d / "initrd.img", key,
                        info["kernel_name"], info["initrd_name"], True,
                        time.monotonic() - t0)  # fmt: skip
    log.info("building the stand-in node disk for %s (rootfs + real provisioning)…", site)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-disk-", dir=d) as tmp:
        root = rootfs.extract_rootfs(tarball, Path(tmp) / "root")
        standins.build_standin_repo(root / REPO_IN_ROOT.lstrip("/"), **versions)
        fstab = root / "etc/fstab"  # one fstab for both layouts (whole-disk ext4 and GPT)
        fstab.write_text(fstab.read_text().replace("/dev/vda ", "LABEL=root "))
        (root / STANDIN_DHCP[0]).rename(root / STANDIN_DHCP[1])
        if installer is not None:
            installer(root)
        else:
            build = root / BUILD_IN_ROOT.lstrip("/")
            shutil.copytree(tree / "scripts", build / "scripts")
            shutil.copytree(tree / "files", build / "files")
            _chroot_provision(root)
            shutil.rmtree(build, ignore_errors=True)  # cleanup.sh may have emptied /var/tmp
        with contextlib.suppress(FileNotFoundError):
            (root / standins.STANDIN_LOG.lstrip("/")).unlink()
        bootcheck.install(root)  # the TEST-ONLY check unit
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


def prune_disks(site: str, keep: Path, newest: int = 2, idle: float = 3 * 3600) -> None:
    """Keep the ``newest`` node disks of ``site`` (every commit renders a new one) and
    every disk used in the last ``idle`` seconds (another session may be booting it)."""
    entries = sorted(
        (p for p in keep.parent.glob(f"{site}-*") if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    now = time.time()
    for old in entries[max(0, newest - 1) :]:
        if now - old.stat().st_mtime < idle:
            continue
        log.debug("pruning old node disk %s", old)
        shutil.rmtree(old, ignore_errors=True)


ESP_MIB = 32
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "normal", "linux", "search", "search_label",
    "configfile", "echo", "serial", "terminal", "gzio", "efi_gop", "all_video",
)  # fmt: skip


def build_uefi_disk(disk: NodeDisk) -> Path:
    """GPT image for OVMF: ESP (GRUB x86_64-efi, loads the kernel from partition 2) + ext4."""
    # named after its kernel command line: a new one is a new disk
    tag = hashlib.sha256(APPEND_UEFI.encode()).hexdigest()[:8]
    out = disk.qcow2.with_name(f"disk-uefi-{tag}.qcow2")
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
        (root / STANDIN_DHCP[0]).rename(root / STANDIN_DHCP[1])
        raw = Path(tmp) / "root.img"
        run(["truncate", "-s", f"{size_gb}G", raw])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, "-E", "root_owner=0:0", raw],
            env={"E2FSPROGS_FAKE_TIME": "0"}, timeout=900)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, t], timeout=900)
    return out


# -- a site's stand-in disk, ready to boot -------------------------------------------------
@dataclass
class StandinSite:
    """A site's stand-in disk and what its nodes must show (``reportchecks.Expect``)."""

    site: str
    profile: Any
    tree: Path
    ident: HubIdentity
    disk: NodeDisk
    expect: Expect
    seconds: dict[str, float]

    def image(self, *, uefi: bool = False) -> BootImage:
        """How ``builder boot-test`` boots this disk (``boot_args`` as a library value)."""
        if self.disk.kernel is None:
            return boot_image(self.disk.qcow2, uefi=uefi)
        if uefi:
            return boot_image(build_uefi_disk(self.disk), uefi=True)
        return boot_image(self.disk.qcow2, kernel=self.disk.kernel, initrd=self.disk.initrd,
                          append=APPEND)  # fmt: skip

    def boot_args(self, *, uefi: bool = False) -> list[str]:
        """``builder boot-test SITE`` options that boot this disk (and wait for the check
        program's report on each console)."""
        img = self.image(uefi=uefi)
        # the disk carries the check program: wait for its report before the power-off
        out = ["--image", str(img.path), "--expect-console", bootcheck.CONSOLE_MARKER]
        if img.kernel is None:
            return out + (["--uefi"] if uefi else [])
        return out + ["--kernel", str(img.kernel), "--initrd", str(img.initrd),
                      "--append", img.append]  # fmt: skip


def prepare_site(
    site: str,
    workdir: Path,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    rebuild: bool = False,
    installed: bool = False,
) -> StandinSite:
    """Render the site for the lab hub + stand-in repo and build (or reuse) its disk:
    provisioned like Packer does, or (``installed``) by the stand-in installer step of the
    ISO path (installer.py: subiquity's files + our autoinstall late-commands)."""
    t0 = time.monotonic()
    lab, profile, tree = render_standin(site, workdir, profiles_dir, overrides)
    with _PREP_LOCK:
        rootfs.build_rootfs(ROOTFS_EXTRA)
    t1 = time.monotonic()
    versions = standin_versions(profile)
    installer: Callable[[Path], None] | None = None
    if installed:
        from tests.support import installer as inst

        tarball = rootfs.build_rootfs(ROOTFS_EXTRA)
        installer = lambda root: inst.install(root, tree, workdir, tarball)  # noqa: E731
    disk = build_node_disk(site, tree, versions, rebuild=rebuild, installer=installer,
                           kind="installed" if installed else "disk")  # fmt: skip
    t2 = time.monotonic()
    secs = {"render": round(t1 - t0, 1), "disk": round(t2 - t1, 1)}
    log.info("%s: rendered in %.1f s; disk %s in %.1f s", site, secs["render"],
             "reused from cache" if disk.cached else "built", secs["disk"])  # fmt: skip
    exp = expectations(profile, lab.ident)
    exp = Expect(**{**exp.__dict__, "standin_versions": versions})
    return StandinSite(site, profile, tree, lab.ident, disk, exp, secs)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tests.support.nodedisk",
        description="Build (or reuse) the stand-in node disk of SITE; print its path.",
    )
    ap.add_argument("site")
    ap.add_argument("--uefi", action="store_true", help="the GPT variant for OVMF")
    ap.add_argument("--args", action="store_true", help="print `builder boot-test` options")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument(
        "--installed",
        action="store_true",
        help="install the root with the stand-in installer step (the ISO path)",
    )
    ap.add_argument(
        "--base-image",
        type=Path,
        default=None,
        help="provision this REAL cloud image instead (needs internet)",
    )
    ap.add_argument("--profiles-dir", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="nf-nodedisk-") as tmp:
        try:
            if args.base_image is not None:
                from tests.support.baseimage import prepare_from_base_image

                s = prepare_from_base_image(args.site, args.base_image, Path(tmp),
                                            profiles_dir=args.profiles_dir,
                                            overrides=args.overrides, uefi=args.uefi)  # fmt: skip
            else:
                s = prepare_site(args.site, Path(tmp), profiles_dir=args.profiles_dir,
                                 overrides=args.overrides, rebuild=args.rebuild,
                                 installed=args.installed)  # fmt: skip
            out = s.boot_args(uefi=args.uefi)
        except BuilderError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2 if exc.exit_code == 2 else 1
    print(shlex.join(out) if args.args else out[1])  # shell words: `eval` them
    return 0


if __name__ == "__main__":
    sys.exit(main())
