"""Boot tests on a real cloud image (``--base-image``): provision it in a first boot."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from builder.fsutil import atomic_output
from builder.run import run

from . import qemu
from .checks import Expect, expectations
from .constants import FORMAT, log
from .disk import NodeDisk, _hash_tree, cache_root
from .guest import BOOTCHECK_UNIT, bootcheck_script
from .lab import hub_identity
from .node import make_node
from .site import _PREP_LOCK, SiteSetup, lab_overrides

# -- a real cloud image (--base-image) ------------------------------------------------------
PROVISIONED = "NODEFORGE-PROVISIONED"
PROVISION_FAILED = "NODEFORGE-PROVISION-FAILED"


def provision_user_data(tree: Path) -> bytes:
    """A cloud-config that provisions a REAL cloud image from inside (as Packer would):
    unpack scripts/ + files/ + the TEST-ONLY check unit, run provision.sh against the
    profile's real repositories, report on the console and power off."""
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for part in ("scripts", "files"):
            tf.add(tree / part, arcname=part)
        for name, text, mode in (
            ("test/nodeforge-bootcheck", bootcheck_script(), 0o755),
            ("test/nodeforge-bootcheck.service", BOOTCHECK_UNIT, 0o644),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    payload = base64.b64encode(buf.getvalue()).decode()
    script = (
        "set -e; d=/var/tmp/nodeforge-build; mkdir -p $d; "
        "tar -C $d -xzf /var/lib/nodeforge-payload.tgz; rm -f /var/lib/nodeforge-payload.tgz; "
        "install -D -m 0755 $d/test/nodeforge-bootcheck "
        "/usr/lib/nodeforge-test/nodeforge-bootcheck; "
        "install -m 0644 $d/test/nodeforge-bootcheck.service /etc/systemd/system/; "
        "systemctl enable nodeforge-bootcheck.service; "
        f"if bash $d/scripts/provision.sh; then echo {PROVISIONED} >/dev/ttyS0; "
        f"else echo {PROVISION_FAILED} >/dev/ttyS0; fi"
    )
    doc = {
        "write_files": [
            {
                "path": "/var/lib/nodeforge-payload.tgz",
                "encoding": "b64",
                "content": payload,
                "permissions": "0600",
            }
        ],  # fmt: skip
        "runcmd": [["bash", "-c", script]],
        "power_state": {"mode": "poweroff", "condition": True, "timeout": 60},
    }
    return b"#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000).encode()


def prepare_from_base_image(
    site: str,
    base_image: Path,
    workdir: Path,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    uefi: bool = False,
    timeout: float = 1800,
) -> SiteSetup:
    """``--base-image``: provision a real cloud image (e.g. Ubuntu's) by booting it once.

    Needs a machine with internet (the profile's real package repositories) and, to be
    quick, KVM. The provisioning boot uses QEMU user networking in the HOST namespace (it
    must reach the repositories); the test boots afterwards run in the private namespace
    with the test hub, like the stand-in disk. Result cached by the hash of the image and
    the rendered tree.
    """
    from builder.fsutil import sha256_file
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    t0 = time.monotonic()
    base = load_profile(site, profiles_dir, list(overrides))
    cidr = base.spec.wireguard.overlay_cidr
    hub_ip = base.spec.wireguard.hub_overlay_ip
    with _PREP_LOCK:
        ident = hub_identity(cidr, hub_ip)
    hub_only = [o for o in lab_overrides(ident) if not o.startswith(("kubernetes.", "crio."))]
    profile = load_profile(site, profiles_dir, [*hub_only, *overrides])
    tree = workdir / "build" / site
    render_site(profile, tree)
    h = hashlib.sha256(f"{FORMAT}|real|{sha256_file(base_image)}|{uefi}\n".encode())
    _hash_tree(h, tree, "files")
    _hash_tree(h, tree, "scripts")
    h.update(bootcheck_script().encode() + BOOTCHECK_UNIT.encode())
    key = h.hexdigest()[:20]
    d = cache_root() / "real" / f"{site}-{key}"
    out = d / "disk.qcow2"
    cached = out.exists()
    if not cached:
        d.mkdir(parents=True, exist_ok=True)
        node = make_node("provision", base_image, workdir, provision_user_data(tree), site)
        vm = qemu.VM(memory_mb=2048, cpus=2, disk=node.overlay, seeds=[node.seed], network=True)
        vm.firmware = "uefi" if uefi else "bios"
        log.info("provisioning %s in a first boot (real repositories; needs internet)…",
                 base_image.name)  # fmt: skip
        qemu.boot(qemu.build_argv(vm, node.workdir / "fw"), node.log, success=[PROVISIONED],
                  failure=[PROVISION_FAILED, r"Kernel panic"], timeout=timeout,
                  wait_exit=120)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-O", "qcow2", node.overlay, t], timeout=1800)
    no_kernel: Any = None  # boots from its own boot loader
    disk = NodeDisk(site, out, no_kernel, no_kernel, key, "", "", cached, time.monotonic() - t0)
    exp = expectations(profile, ident)
    exp = Expect(**{**exp.__dict__, "standin_versions": {}})
    secs = {"render": 0.0, "disk": round(time.monotonic() - t0, 1)}
    return SiteSetup(site, profile, tree, ident, disk, exp, secs)
