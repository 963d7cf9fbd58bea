"""A REAL cloud image (e.g. Ubuntu's) made into a boot-test disk: provisioned in a first boot.

``python -m tests.support.nodedisk SITE --base-image IMG`` boots ``IMG`` once (QEMU user
networking in the HOST namespace: it must reach the profile's real package repositories,
so this needs internet and, to be quick, KVM) with a cloud-config that unpacks the site's
``scripts/`` + ``files/`` and the TEST-ONLY check program, runs ``provision.sh`` as Packer
would, reports on the console and powers off. The result (cached by the hash of the image
and the rendered tree) is a disk that ``builder boot-test SITE --image`` boots with its own
boot loader, like any built image.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from builder.boottest import boot_image, hub_overrides, make_node, prepare, qemu
from builder.fsutil import atomic_output, sha256_file
from builder.run import run
from tests.support import bootcheck
from tests.support.nodedisk import FORMAT, NodeDisk, StandinSite, _hash_tree, cache_root, log
from tests.support.reportchecks import Expect, expectations

PROVISIONED = "NODEFORGE-PROVISIONED"
PROVISION_FAILED = "NODEFORGE-PROVISION-FAILED"


def provision_user_data(tree: Path) -> bytes:
    """A cloud-config that provisions a REAL cloud image from inside (as Packer would):
    unpack scripts/ + files/ + the TEST-ONLY check unit, run provision.sh against the
    profile's real repositories, report on the console and power off."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for part in ("scripts", "files"):
            tf.add(tree / part, arcname=part)
        for path, data, mode in bootcheck.files():
            info = tarfile.TarInfo("test" + path)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    payload = base64.b64encode(buf.getvalue()).decode()
    script = (
        "set -e; d=/var/tmp/nodeforge-build; mkdir -p $d; "
        "tar -C $d -xzf /var/lib/nodeforge-payload.tgz; rm -f /var/lib/nodeforge-payload.tgz; "
        "cp -a $d/test/. /; systemctl enable nodeforge-bootcheck.service; "
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
) -> StandinSite:
    """Provision ``base_image`` for ``site`` in a first boot (cached); the disk boots with
    its own boot loader (``NodeDisk.kernel`` is None)."""
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    t0 = time.monotonic()
    lab = prepare(site, workdir / "lab", profiles_dir=profiles_dir, overrides=overrides)
    profile = load_profile(site, profiles_dir, [*hub_overrides(lab.ident), *overrides])
    tree = workdir / "build" / site
    render_site(profile, tree)
    h = hashlib.sha256(f"{FORMAT}|real|{sha256_file(base_image)}|{uefi}\n".encode())
    _hash_tree(h, tree, "files")
    _hash_tree(h, tree, "scripts")
    h.update(bootcheck.digest())
    key = h.hexdigest()[:20]
    d = cache_root() / "real" / f"{site}-{key}"
    out = d / "disk.qcow2"
    cached = out.exists()
    if not cached:
        d.mkdir(parents=True, exist_ok=True)
        img = boot_image(base_image, uefi=uefi)
        node = make_node("provision", img, workdir, provision_user_data(tree), site)
        seeds = [node.seed] if node.seed else []
        vm = qemu.VM(memory_mb=2048, cpus=2, disk=node.overlay, seeds=seeds, network=True)
        vm.firmware = "uefi" if uefi else "bios"
        log.info("provisioning %s in a first boot (real repositories; needs internet)…",
                 base_image.name)  # fmt: skip
        qemu.boot(qemu.build_argv(vm, node.workdir / "fw"), node.workdir / "console.log",
                  success=[PROVISIONED], failure=[PROVISION_FAILED, r"Kernel panic"],
                  timeout=timeout, wait_exit=120)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-O", "qcow2", node.overlay, t], timeout=1800)
    disk = NodeDisk(site, out, None, None, key, "", "", cached, time.monotonic() - t0)
    exp = expectations(profile, lab.ident)
    exp = Expect(**{**exp.__dict__, "standin_versions": {}})
    secs = {"render": 0.0, "disk": round(time.monotonic() - t0, 1)}
    return StandinSite(site, profile, tree, lab.ident, disk, exp, secs)
