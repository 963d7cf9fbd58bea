"""Boot test of a built artifact: power nodes made from it on in QEMU and prove they join.

What ``builder boot-test SITE --image DISK`` does:

1. The site is rendered with its enrollment and WireGuard settings pointing at a lab hub
   (``site.prepare``); the node's enrollment config is baked into the image, so an image
   enrolls with the lab when it was built from a render with the lab's overrides. The lab
   hub's identity (CA, keys) is made once with ``builder hub init`` and cached; each run
   gets a fresh hub database.
2. In a private network namespace (``ip netns add``, loopback up) runs the REAL hub
   (``builder hub serve``, a wireguard-go interface); QEMU user networking inside that
   namespace lets the guest reach it at 10.0.2.2 (the namespace's loopback), for HTTPS and
   for WireGuard over UDP. Nothing leaves the namespace.
3. Every node boots the given disk through its own qcow2 overlay (the image is never
   written; two nodes from one image get different machine-ids) with a NoCloud seed: the
   rendered user-data plus what ``builder seed`` adds per node (host name, a one-time token
   from ``builder hub token create``; ``--node-seed-only``: only that, as for a system
   installed from the site's ISO, which carries its node config; ``--static``: a static
   address per node, as ``builder seed --ip`` writes it). The disk boots with its own
   boot loader (BIOS, or OVMF with ``--uefi``) or, for a disk without one, by direct
   kernel boot (``--kernel``).
4. "Joined" is decided from the hub's side: the node's row in the hub's database is in
   state ``joined`` and the hub has a WireGuard handshake with the node's key from this boot
   (``node.JoinWatch``). The serial console is kept per boot (and can be required to show
   given lines first, e.g. a check program's report). Then the node powers off (ACPI power
   button over QMP). A reboot of the first node must come back with the same identity and
   address, without enrolling again.

Modules, one purpose each (imports flow down this list, never up):

``constants``  shared values (ports, addresses, kernel arguments, the logger)
``qemu``       QEMU argv + boot with console markers (also used by the ISO boot tests)
``lab``        the cached hub identity; ``Lab`` (namespace + real hub, what the hub sees)
``node``       the image to boot; one node: seed, overlay, boot, ``JoinWatch``
``site``       render a site for the lab: ``prepare``
``install``    ``install_iso``: an ISO installs itself onto a blank virtual disk
``scenarios``  ``run_boot_test``: N nodes join, a reboot does not re-enroll
this file      the entry points: ``preflight``, ``workspace``, ``boot_test``

``builder boot-test SITE --iso ISO [--seed SEED.iso]`` first installs: the ISO boots (never
written) against a blank qcow2 disk made here until the autoinstall ends (the installer
reboots or powers off; bounded, the console tail on failure; ``install.install_iso``), then
the installed disk is the image of steps 3-4. Without ``--seed`` each node gets the seed
``--image`` gives it; with it, the one node keeps that seed's host name, instance-id and
network-config, and gets the lab's user-data and token (``scenarios.user_seed_files``).

Test-only machinery (the stand-in node disk, the in-guest check program and the checks over
its report) lives in ``tests/support``; the package never imports it.
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

from builder.errors import BuilderError, UsageError
from builder.run import require

from . import install, qemu
from .constants import log
from .lab import HubIdentity, Lab, hub_identity, hub_overrides
from .node import (
    BootImage,
    Node,
    NodeBoot,
    boot_image,
    boot_node,
    check_boot_options,
    make_node,
    node_user_data,
)
from .scenarios import run_boot_test
from .site import LabSite, prepare

__all__ = [
    "BootImage",
    "HubIdentity",
    "Lab",
    "LabSite",
    "Node",
    "NodeBoot",
    "boot_image",
    "boot_node",
    "boot_test",
    "boot_test_iso",
    "hub_identity",
    "hub_overrides",
    "make_node",
    "node_user_data",
    "preflight",
    "prepare",
    "run_boot_test",
    "workspace",
]

TOOLS = ("ip", "wg", "wireguard-go", "qemu-img", qemu.QEMU)


def preflight(*, uefi: bool = False) -> None:
    """Fail early, with a hint, when a boot test cannot run here."""
    if os.geteuid() != 0:
        raise BuilderError(
            "boot tests need root (a network namespace for the hub and its WireGuard)",
            hint="run as root, e.g. sudo make boot-test SITE=…",
        )
    for tool in TOOLS:
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
    image: Path,
    *,
    nodes: int = 1,
    uefi: bool = False,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    keep: bool = False,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    reboot: bool = True,
    console: Sequence[str] = (),
    timeout: float = 900,
    node_seed_only: bool = False,
    static: bool = False,
) -> dict[str, Any]:
    """``builder boot-test SITE --image DISK``: boot, decide "joined", log the timings."""
    preflight(uefi=uefi)
    img = boot_image(image, uefi=uefi, kernel=kernel, initrd=initrd, append=append)
    with workspace(keep) as wd:
        t0 = time.monotonic()
        lab_site = prepare(site, wd, profiles_dir=profiles_dir, overrides=overrides)
        result = run_boot_test(lab_site, img, wd, nodes=nodes, reboot=reboot, console=console,
                               timeout=timeout, node_seed_only=node_seed_only,
                               static=static)  # fmt: skip
        result["timings"]["total"] = round(time.monotonic() - t0, 1)
        if keep:
            result["workdir"] = str(wd)
    _log_timings(result)
    return result


def boot_test_iso(
    site: str,
    iso: Path,
    *,
    seed: Path | None = None,
    node_seed_only: bool = False,
    nodes: int = 1,
    uefi: bool = False,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str | None = None,
    keep: bool = False,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    reboot: bool = True,
    console: Sequence[str] = (),
    timeout: float = 900,
    install_timeout: float = 3600,
    online: bool = False,
    static: bool = False,
) -> dict[str, Any]:
    """``builder boot-test SITE --iso ISO [--seed SEED]``: install the ISO onto a blank
    disk, then boot the installed disk as ``boot_test`` boots an image (``node_seed_only``:
    each node's seed carries only what ``builder seed`` writes, so the installed system's
    own configuration must do the rest)."""
    iso = install.check_iso(iso)
    check_boot_options(uefi=uefi, kernel=kernel, initrd=initrd, append=append)
    if seed is not None:
        if not seed.is_file():
            raise UsageError(f"--seed: {seed}: no such file")
        if nodes != 1:
            raise UsageError("--seed: one seed is one machine (use --nodes 1)")
        if static:
            raise UsageError("--seed and --static exclude each other (the seed has the network)")
        if node_seed_only:
            raise UsageError("--seed and --node-seed-only exclude each other (the node's seed "
                             "is yours, with the lab's token and hub settings)")  # fmt: skip
    preflight(uefi=uefi)
    require("xorriso")
    with workspace(keep) as wd:
        t0 = time.monotonic()
        user_seed = install.seed_files(seed, wd) if seed is not None else None
        lab_site = prepare(site, wd, profiles_dir=profiles_dir, overrides=overrides)
        inst = install.install_iso(iso, wd / "install", timeout=install_timeout, online=online,
                                   uefi=uefi)  # fmt: skip
        img = boot_image(inst.disk, uefi=uefi, kernel=kernel, initrd=initrd, append=append)
        name = install.seed_hostname(user_seed) if user_seed is not None else None
        result = run_boot_test(lab_site, img, wd, nodes=nodes, reboot=reboot, console=console,
                               timeout=timeout, static=static, user_seed=user_seed,
                               user_seed_name=name, node_seed_only=node_seed_only)  # fmt: skip
        result["iso"] = str(iso)
        result["seed"] = str(seed) if seed is not None else None
        result["install_console"] = str(inst.console)
        result["timings"]["install"] = inst.seconds
        result["timings"]["total"] = round(time.monotonic() - t0, 1)
        if keep:
            result["workdir"] = str(wd)
    _log_timings(result)
    return result


def _log_timings(result: dict[str, Any]) -> None:
    t = result["timings"]
    joined = [n.get("seconds_to_joined") for n in result["nodes"]]
    log.info(
        "timings (s): render %s, %shub %s, first boot %s (joined after %s), reboot %s, total %s",
        t.get("render"), f"install {t['install']}, " if "install" in t else "", t.get("hub_start"),
        t.get("first_boot"), "/".join(str(s) for s in joined), t.get("reboot", "-"),
        t.get("total"),
    )  # fmt: skip
