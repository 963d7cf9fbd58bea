"""Boot tests: power a node made by this tool on in QEMU and prove it joins on its own.

What ``builder boot-test SITE`` does:

1. **Stand-in node disk** (cached, keyed by the hash of everything that goes into it): the
   Debian bookworm root from ``rootfs.build_rootfs()`` — a STAND-IN for the installed
   Ubuntu system, which is unreachable here — provisioned in a chroot by OUR REAL scripts
   (``scripts/provision.sh`` of the site's rendered build tree, with its ``provision.env``)
   against the STAND-IN apt repository of ``standins.build_standin_repo()`` (``file://``
   URLs inside the root). A TEST-ONLY unit, ``nodeforge-bootcheck.service``, is added: it
   waits (bounded) for ``/var/lib/nodeforge/joined`` or a permanent enrollment failure,
   prints one ``NODEFORGE-BOOTCHECK`` line with a JSON report to the serial console and
   powers off. The root becomes an ext4 image with ``mkfs.ext4 -d`` (no mounts) → qcow2,
   booted by direct kernel boot (``root=/dev/vda``) on virtio; ``--uefi`` assembles a GPT
   disk instead (ESP from ``mkfs.vfat -C`` + mtools holding a ``grub-mkimage`` x86_64-efi
   loader, the same ext4 as partition 2; ``sfdisk`` + ``dd``, no loop devices) for OVMF.
2. Every boot runs on its own qcow2 overlay (backing file): the base stays clean and two
   nodes from one image get different machine-ids. The site's real rendered cloud-init
   user-data goes on a NoCloud seed (``seed.write_seed``) with the per-node entries
   ``builder seed`` would add (hostname, a one-time token from ``builder hub token create``).
3. In a private network namespace (``ip netns add``, loopback up) runs the REAL hub
   (``builder hub serve``, wireguard-go interface); QEMU user networking inside that
   namespace lets the guest reach it at 10.0.2.2 (the namespace's loopback), for HTTPS and
   for WireGuard over UDP. Nothing leaves the namespace.
4. Checks from the guest's report and the hub's database (``builder hub nodes --json``).

The hub's identity (CA, keys) is made once with ``builder hub init`` and cached, so the
rendered tree, and with it the disk, stay cache hits between runs; each run gets a fresh
hub database.

Modules, one purpose each (imports flow down this list, never up):

``constants``  shared values (ports, paths, kernel arguments, the logger)
``guest``      the TEST-ONLY check unit and script shipped into the disk; ``parse_report``
``disk``       the stand-in node disk (build, cache, prune), its UEFI/GPT variant, the bare disk
``lab``        the cached hub identity; ``Lab`` (namespace + real hub); ``HubOutage``
``node``       one guest: user-data, overlay + seed, boot in QEMU; the bare baseline boot
``checks``     ``Expect`` and the checks over a guest's report and the hub's database
``site``       render a site for the lab and build (or reuse) its disk: ``prepare_site``
``scenarios``  ``run_boot_test``, ``run_hub_late``, ``run_expired_token``
``baseimage``  ``--base-image``: provision a real cloud image in a first boot
this file      the entry points: ``preflight``, ``workspace``, ``boot_test``
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.run import require

from . import qemu
from .baseimage import PROVISION_FAILED, PROVISIONED, prepare_from_base_image, provision_user_data
from .checks import (
    Expect,
    check_hub,
    check_joined,
    check_not_configured,
    check_reboot,
    expectations,
)
from .constants import (
    API_SERVER,
    APPEND,
    APPEND_UEFI,
    BOOTCHECK_WAIT,
    BUILD_IN_ROOT,
    BUILDER,
    FORMAT,
    HUB_HOST,
    HUB_PORT,
    MARKER,
    REPO_IN_ROOT,
    REQUIRED_SYSCTLS,
    ROOTFS_EXTRA,
    STATIC_CA_HASH,
    STATIC_JOIN_TOKEN,
    WG_PORT,
    log,
)
from .disk import (
    ESP_MIB,
    GRUB_MODULES,
    NodeDisk,
    build_bare_disk,
    build_node_disk,
    build_uefi_disk,
    cache_root,
    disk_key,
    prune_disks,
)
from .guest import BOOTCHECK_SCRIPT, BOOTCHECK_UNIT, bootcheck_script, parse_report
from .lab import HubIdentity, HubOutage, Lab, builder_cli, hub_identity
from .node import (
    CLOUD_INIT_DONE,
    Node,
    boot_bare,
    boot_node,
    machine_identity,
    make_node,
    node_user_data,
)
from .scenarios import run_boot_test, run_expired_token, run_hub_late
from .site import SiteSetup, gpu_overrides, lab_overrides, prepare_site, standin_versions

__all__ = [
    "API_SERVER",
    "APPEND",
    "APPEND_UEFI",
    "BOOTCHECK_SCRIPT",
    "BOOTCHECK_UNIT",
    "BOOTCHECK_WAIT",
    "BUILDER",
    "BUILD_IN_ROOT",
    "CLOUD_INIT_DONE",
    "DISK_TOOLS",
    "ESP_MIB",
    "Expect",
    "FORMAT",
    "GRUB_MODULES",
    "HUB_HOST",
    "HUB_PORT",
    "HubIdentity",
    "HubOutage",
    "Lab",
    "MARKER",
    "Node",
    "NodeDisk",
    "PROVISIONED",
    "PROVISION_FAILED",
    "REPO_IN_ROOT",
    "REQUIRED_SYSCTLS",
    "ROOTFS_EXTRA",
    "STATIC_CA_HASH",
    "STATIC_JOIN_TOKEN",
    "SiteSetup",
    "TOOLS",
    "UEFI_TOOLS",
    "WG_PORT",
    "boot_bare",
    "boot_node",
    "boot_test",
    "bootcheck_script",
    "build_bare_disk",
    "build_node_disk",
    "build_uefi_disk",
    "builder_cli",
    "cache_root",
    "check_hub",
    "check_joined",
    "check_not_configured",
    "check_reboot",
    "disk_key",
    "expectations",
    "gpu_overrides",
    "hub_identity",
    "lab_overrides",
    "log",
    "machine_identity",
    "make_node",
    "node_user_data",
    "parse_report",
    "preflight",
    "prepare_from_base_image",
    "prepare_site",
    "provision_user_data",
    "prune_disks",
    "run_boot_test",
    "run_expired_token",
    "run_hub_late",
    "standin_versions",
    "workspace",
]


TOOLS = ("ip", "wg", "wireguard-go", "qemu-img", qemu.QEMU)
DISK_TOOLS = ("mmdebstrap", "mkfs.ext4", "unshare", "dpkg-deb", "dpkg-scanpackages", "gpg")
UEFI_TOOLS = ("grub-mkimage", "mkfs.vfat", "mmd", "mcopy", "sfdisk")


def preflight(*, uefi: bool = False, base_image: bool = False) -> None:
    """Fail early, with a hint, when a boot test cannot run here."""
    if os.geteuid() != 0:
        raise BuilderError(
            "boot tests need root (network namespaces for the hub, a chroot for the disk)",
            hint="run as root, e.g. sudo make boot-test SITE=…",
        )
    for tool in TOOLS + (() if base_image else DISK_TOOLS) + (UEFI_TOOLS if uefi else ()):
        require(tool)
    if uefi:
        qemu.ovmf()


@contextlib.contextmanager
def workspace(keep: bool, prefix: str = "nf-boot-") -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        if keep:
            log.info("kept the work directory: %s", d)
        else:
            shutil.rmtree(d, ignore_errors=True)


def boot_test(
    site: str,
    *,
    nodes: int = 1,
    uefi: bool = False,
    keep: bool = False,
    base_image: Path | None = None,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    reboot: bool = True,
) -> dict[str, Any]:
    """``builder boot-test SITE``: prepare (or reuse) the disk, boot, check; timings logged."""
    preflight(uefi=uefi, base_image=base_image is not None)
    with workspace(keep) as wd:
        t0 = time.monotonic()
        if base_image is not None:
            setup = prepare_from_base_image(site, base_image, wd, profiles_dir=profiles_dir,
                                            overrides=overrides, uefi=uefi)  # fmt: skip
        else:
            setup = prepare_site(site, wd, profiles_dir=profiles_dir, overrides=overrides)
        result = run_boot_test(setup, wd, nodes=nodes, uefi=uefi, reboot=reboot)
        result["timings"]["total"] = round(time.monotonic() - t0, 1)
        if keep:
            result["workdir"] = str(wd)
    t = result["timings"]
    log.info(
        "timings (s): render %s, disk %s (%s), hub %s, first boot %s (joined after %s), "
        "reboot %s, total %s",
        t.get("render"), t.get("disk"), "cached" if result["disk_cached"] else "built",
        t.get("hub_start"), t.get("first_boot"),
        "/".join(str(n["seconds_to_joined"]) for n in result["nodes"]),
        t.get("reboot", "-"), t.get("total"),
    )  # fmt: skip
    return result
