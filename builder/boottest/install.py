"""Boot tests of an ISO: install it onto a blank virtual disk, as a bare-metal machine would.

``install_iso(iso, workdir)`` boots the user's ISO (read-only, never modified) in QEMU
(``-M pc``, the ISO on the IDE CD-ROM, BIOS) against a blank qcow2 disk made here on
virtio, and waits for the autoinstall to finish: the installer reboots or powers off when
done (autoinstall ``shutdown``; QEMU runs with ``-no-reboot``, so either ends it), bounded
by ``timeout``. The install passed when QEMU exited by itself and the disk is no longer
blank; otherwise ``qemu.BootFailed`` carries the console tail. The ISO's kernel command
line decides whether its installer talks on the serial console at all (a stock Ubuntu ISO
does not: only the outcome is seen then).

The installer's network: QEMU user networking in a private network namespace with only a
loopback (nothing leaves the machine) unless ``online`` (the host's namespace: a real
Ubuntu ISO whose autoinstall installs packages from the archive needs it).

``seed_files(seed_iso)`` reads a ``builder seed`` volume (``CIDATA``) for ``--seed``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.errors import BuilderError, UsageError
from builder.run import run
from builder.targets import iso as iso_mod

from . import qemu
from .constants import log

INSTALL_FAILURE = [r"Kernel panic", r"STANDIN-INSTALL-FAILED.*"]
SEED_FILES = ("meta-data", "user-data", "network-config")


@dataclass
class Installed:
    """The disk an ISO installed and how long that took."""

    disk: Path
    seconds: float
    console: Path


def check_iso(path: Path) -> Path:
    """A readable ISO 9660 image (its primary volume descriptor), resolved."""
    if not path.is_file():
        raise UsageError(f"--iso: {path}: no such file")
    with open(path, "rb") as fh:
        fh.seek(16 * 2048 + 1)
        if fh.read(5) != b"CD001":
            raise UsageError(f"--iso: {path}: not an ISO 9660 image (no CD001 volume descriptor)")
    return path.resolve()


def disk_written(disk: Path) -> bool:
    """Does the qcow2 ``disk`` hold any data (``qemu-img map``)?"""
    res = run(["qemu-img", "map", "--output=json", disk], timeout=120)
    try:
        return any(bool(e.get("data")) for e in json.loads(res.stdout))
    except (ValueError, AttributeError):
        return False


def install_iso(
    iso: Path,
    workdir: Path,
    *,
    disk_gb: int = 16,
    memory_mb: int = 2048,
    timeout: float = 3600,
    online: bool = False,
    uefi: bool = False,
) -> Installed:
    """Install ``iso`` onto a new blank disk in ``workdir``; return the installed disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "installed.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", disk, f"{disk_gb}G"])
    vm = qemu.VM(firmware="uefi" if uefi else "bios", memory_mb=memory_mb, cpus=1,
                 cdrom=iso, disk=disk, network=True)  # fmt: skip
    argv = qemu.build_argv(vm, workdir / "fw-install")
    ns = None
    if not online:  # a namespace with only a loopback: the installer reaches nothing
        ns = f"nfinst{os.getpid() % 100000}x{int(time.monotonic() * 1000) % 100000}"
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        argv = ["ip", "netns", "exec", ns, *argv]
    console = workdir / "install-console.log"
    log.info("installing %s onto a blank %d GiB disk (timeout %g s)…", iso.name, disk_gb, timeout)
    try:
        res = qemu.boot(argv, console, success=[], failure=INSTALL_FAILURE, timeout=timeout,
                        ready=lambda _text, final: final)  # fmt: skip
    finally:
        if ns is not None:
            run(["ip", "netns", "del", ns], check=False)
    if not disk_written(disk):
        qlog = console.with_name(console.name + ".qemu")
        qerr = qlog.read_text(errors="replace").strip() if qlog.exists() else ""
        raise qemu.BootFailed(
            "the installer ended without writing to the disk"
            + (f"\nqemu: {qerr[-2000:]}" if qerr else ""),
            "\n".join(res.console.rstrip().splitlines()[-40:]),
        )
    log.info("installed in %.0f s", res.seconds)
    return Installed(disk, round(res.seconds, 1), console)


def seed_files(seed_iso: Path, workdir: Path) -> dict[str, bytes]:
    """The NoCloud files of a seed volume (``builder seed``'s ``CIDATA`` ISO)."""
    found = iso_mod.read_files(seed_iso, SEED_FILES, workdir / "seed-read")
    if "meta-data" not in found:
        raise UsageError(f"--seed: {seed_iso}: no meta-data file (not a NoCloud seed volume)")
    return found


def seed_hostname(files: dict[str, bytes]) -> str | None:
    """``local-hostname`` from a seed's meta-data, if any."""
    try:
        meta = yaml.safe_load(files["meta-data"]) or {}
    except yaml.YAMLError as exc:
        raise BuilderError(f"--seed: meta-data: not YAML: {exc}") from None
    name = meta.get("local-hostname") if isinstance(meta, dict) else None
    return str(name) if name else None
