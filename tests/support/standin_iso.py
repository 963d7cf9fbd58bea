"""A site's ISO that installs in the guest: the stand-in live ISO + a stand-in installed root.

``prepare_iso_site(site, workdir)`` makes what ``builder boot-test SITE --iso ISO`` needs
to prove the ISO path here, where no Ubuntu media can be fetched:

1. the stand-in installed root (nodedisk.py's recipe: the Debian STAND-IN root with the
   STAND-IN package repository and the TEST-ONLY check program, NOT provisioned: that is
   the job of our late-commands at install time) as a whole-disk ext4 image, gzipped;
2. a copy of the stand-in live ISO (ubuntu_like_iso.py) carrying it as
   ``/casper/standin-root.img.gz`` (where Ubuntu's ISO has the squashfs curtin extracts)
   with ``/casper/standin_installer.py`` (the same subiquity/curtin steps the host-side
   installer runs): its busybox "installer" installs to a blank disk under ``autoinstall``;
3. the site's ISO built from that base by the REAL pipeline (``build_iso``: render,
   verify the pinned base, remaster), rendered for the lab hub ``builder boot-test`` runs.

The installed disk has no boot loader (as the stand-in node disks): ``boot_args`` gives the
direct kernel boot options (the root's own kernel and initrd) with ``--iso``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.boottest import hub_overrides, prepare
from builder.boottest.constants import APPEND
from builder.fsutil import atomic_output
from builder.run import run
from builder.site.profile import load_profile
from builder.targets.image import build_iso
from tests.support import bootcheck, nodedisk, standin_installer, ubuntu_like_iso
from tests.support.iso_inputs import fixture_overrides
from tests.support.reportchecks import Expect, expectations

ROOT_GB = 2  # the installed root file system (the disk it goes to may be larger)


@dataclass
class IsoSite:
    site: str
    profile: Any
    iso: Path  # the site's remastered ISO (what a user would write to a USB stick)
    base: Path  # the stand-in live ISO carrying the stand-in installed root
    disk: nodedisk.NodeDisk  # the root before installation (kernel/initrd for the boot)
    expect: Expect
    seconds: dict[str, float]

    def boot_args(self) -> list[str]:
        """``builder boot-test SITE`` options: install from the ISO, boot the installed disk
        by direct kernel boot, wait for the check program's report."""
        return ["--iso", str(self.iso), "--kernel", str(self.disk.kernel),
                "--initrd", str(self.disk.initrd), "--append", APPEND,
                "--expect-console", bootcheck.CONSOLE_MARKER]  # fmt: skip


def _shrink(raw: Path, free_mib: int = 768) -> None:
    """Shrink the ext4 image to its content + ``free_mib`` (room for the provisioning):
    the in-guest installer writes every byte of it, and TCG writes slowly."""
    run(["e2fsck", "-f", "-y", raw], check=False, timeout=600)  # resize2fs wants it checked
    run(["resize2fs", "-M", raw], timeout=900)
    head = run(["dumpe2fs", "-h", raw], timeout=120).stdout
    info = dict(line.split(":", 1) for line in head.splitlines() if ":" in line)
    size = int(info["Block count"]) * int(info["Block size"]) + free_mib * 1024 * 1024
    run(["resize2fs", raw, f"{size // 1024}K"], timeout=900)
    os.truncate(raw, size)


def installer_base(disk: nodedisk.NodeDisk) -> Path:
    """The stand-in live ISO + ``disk``'s root as its installable payload (cached)."""
    fixture = ubuntu_like_iso.build_fixture()
    h = hashlib.sha256(f"{fixture.parent.name}|{disk.key}|".encode())
    h.update(Path(standin_installer.__file__).read_bytes())
    out = disk.qcow2.with_name(f"standin-live-{h.hexdigest()[:12]}.iso")
    if out.exists():
        return out
    raw = disk.qcow2.with_name("root.img")
    gz = disk.qcow2.with_name("standin-root.img.gz")  # kept: a new live ISO reuses it
    if not gz.exists():
        try:
            run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.qcow2, raw],
                timeout=900)  # fmt: skip
            _shrink(raw)
            run(["gzip", "-1", "-f", raw], timeout=900)  # -> root.img.gz, then renamed
            raw.with_name("root.img.gz").rename(gz)
        finally:
            raw.unlink(missing_ok=True)
    with atomic_output(out) as t:
        run(["xorriso", "-indev", fixture, "-outdev", t, "-boot_image", "any", "replay",
             "-map", gz, "/casper/standin-root.img.gz",
             "-map", standin_installer.__file__, "/casper/standin_installer.py"],
            timeout=900)  # fmt: skip
    return out


def prepare_iso_site(
    site: str, workdir: Path, *, overrides: Sequence[str] = (), rebuild: bool = False
) -> IsoSite:
    """The site's ISO for an in-guest stand-in install, rendered for the lab hub."""
    t0 = time.monotonic()
    lab = prepare(site, workdir / "lab", overrides=overrides)
    extra = nodedisk.repo_overrides(lab.profile.spec.gpu.enabled)
    base_overrides = [*hub_overrides(lab.ident), *extra, *overrides]
    profile = load_profile(site, None, base_overrides)
    versions = nodedisk.standin_versions(profile)
    tree = workdir / "root-tree"
    from builder.site.render import render_site

    render_site(profile, tree)
    # subiquity installs the autoinstall's `packages:` (from the ISO's pool or the archive)
    # before the late-commands run; the stand-in root carries them (the installer is offline)
    auto = yaml.safe_load((tree / "cloud-init/autoinstall.yaml").read_text())
    disk = nodedisk.build_node_disk(site, tree, versions, size_gb=ROOT_GB, rebuild=rebuild,
                                    installer=lambda _root: None,  # installed in the guest
                                    kind="standin-root", tree_in_disk=False,
                                    packages=tuple(auto.get("packages") or ()))  # fmt: skip
    t1 = time.monotonic()
    base = installer_base(disk)
    t2 = time.monotonic()
    iso_profile = load_profile(site, None, [*base_overrides, *fixture_overrides(base)])
    iso = build_iso(iso_profile, dist=workdir / "dist", build_dir=workdir / "build",
                    base_iso=base).path  # fmt: skip
    secs = {"root": round(t1 - t0, 1), "base_iso": round(t2 - t1, 1),
            "remaster": round(time.monotonic() - t2, 1)}  # fmt: skip
    exp = expectations(profile, lab.ident)
    exp = Expect(**{**exp.__dict__, "standin_versions": versions})
    return IsoSite(site, profile, iso, base, disk, exp, secs)
