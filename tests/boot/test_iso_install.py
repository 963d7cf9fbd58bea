"""The ISO path after the installer: the installed system's first boot must read its seed.

A STAND-IN installer step (tests/support/installer.py) does to a root what subiquity 24.04 +
curtin do to /target (the cloud-init files subiquity writes, then our rendered autoinstall
late-commands in an installer environment, `curtin in-target` as a chroot), from the
upstream facts recorded in /work/research/subiquity-cloud.md. On the code before the fix
(late-commands that only provisioned; cleanup.sh's `cloud-init clean` runs subiquity's
clean.d hook only when /var/lib/cloud exists) the installed root kept
`99-installer.cfg` (`datasource_list: [None]`: the node's CIDATA seed ignored, every node
named `onprem-node`) or lost every network config — `test_installed_root_reads_its_seed`
failed there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from builder.run import which

pytestmark = pytest.mark.boot

if os.geteuid() != 0:
    pytest.skip("the stand-in installer needs root (mount namespace, chroot)",
                allow_module_level=True)  # fmt: skip
for _tool in ("mmdebstrap", "dpkg-deb", "dpkg-scanpackages", "gpg", "unshare"):
    if not which(_tool):
        pytest.skip(f"{_tool} not installed (make deps)", allow_module_level=True)


def _cloud_cfg(root: Path) -> dict:
    """cloud-init's system config as it merges it: cloud.cfg, then cloud.cfg.d/*.cfg in
    order, later files winning (top-level keys)."""
    cfg: dict = {}
    base = root / "etc/cloud"
    for f in [base / "cloud.cfg", *sorted((base / "cloud.cfg.d").glob("*.cfg"))]:
        if f.is_file():
            cfg.update(yaml.safe_load(f.read_text()) or {})
    return cfg


@pytest.fixture(scope="module", params=["dhcp", "static"])
def installed(request, installed_roots) -> tuple[str, Path]:
    """The root the stand-in installer installed on the host (conftest.install_root; queued
    at the session's start)."""
    return request.param, installed_roots[request.param].result()


def test_installed_root_reads_its_seed(installed: tuple[str, Path]) -> None:
    kind, root = installed
    cloud = root / "etc/cloud"
    # nothing of the installer's own cloud-init config is left
    for rel in ("cloud.cfg.d/99-installer.cfg", "ds-identify.cfg", "cloud-init.disabled",
                "cloud.cfg.d/90-installer-network.cfg",
                "cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg"):  # fmt: skip
        assert not (cloud / rel).exists(), rel
    assert not (root / "etc/netplan/00-installer-config.yaml").exists()
    cfg = _cloud_cfg(root)
    assert "NoCloud" in cfg.get("datasource_list", ["NoCloud"])  # not [None]
    assert "network" not in cfg  # a seed's network-config is not overridden
    # the node's own seed: used alone without a CIDATA volume, replaced by one
    seed = root / "var/lib/cloud/seed/nocloud"
    meta = yaml.safe_load((seed / "meta-data").read_text())
    assert meta["instance-id"].startswith("onprem-") and "local-hostname" not in meta
    ud = (seed / "user-data").read_text()
    assert ud.startswith("#cloud-config\n")
    boot = yaml.safe_load(ud)["bootcmd"][0][2]
    assert "onprem-node" in boot and "/etc/machine-id" in boot  # a machine-derived name
    # what the installer gave the first boot (the admin user and their keys, locale, our
    # first-boot config) is kept as the seed's vendor-data: a CIDATA volume's user-data
    # replaces the seed's user-data but not its vendor-data (NoCloud _merge_new_seed)
    vd = (seed / "vendor-data").read_text()
    assert vd.startswith("#cloud-config")
    vendor = yaml.safe_load(vd)
    assert [u["name"] for u in vendor["users"]] == ["ops"]  # profiles/base.yaml admin.username
    assert vendor["locale"] == "C.UTF-8" and vendor["preserve_hostname"] is False
    assert stat.S_IMODE((seed / "vendor-data").stat().st_mode) == 0o600
    if kind == "static":  # the installed network, kept as the seed's network-config
        net = yaml.safe_load((seed / "network-config").read_text())["network"]
        assert net["ethernets"]["primary"]["addresses"] == ["192.168.50.10/24"]
    else:
        assert not (seed / "network-config").exists()  # cloud-init's fallback: DHCP
    # provisioning ran in the target (late-commands), the enrollment unit is enabled
    wants = root / "etc/systemd/system/multi-user.target.wants/nodeforge-enroll.service"
    assert wants.is_symlink()
    assert (root / "etc/nodeforge-release").exists()
    assert not (root / "var/lib/nodeforge/provision").exists()
    assert (root / "etc/hostname").read_text() == "onprem-node\n"  # subiquity's identity
