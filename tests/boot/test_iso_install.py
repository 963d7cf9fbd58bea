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
from builder.site.profile import load_profile
from builder.site.render import render_site
from tests.support import installer, nodedisk, rootfs, standins
from tests.support.guestslots import GUESTS

pytestmark = pytest.mark.boot

if os.geteuid() != 0:
    pytest.skip("the stand-in installer needs root (mount namespace, chroot)",
                allow_module_level=True)  # fmt: skip
for _tool in ("mmdebstrap", "dpkg-deb", "dpkg-scanpackages", "gpg", "unshare"):
    if not which(_tool):
        pytest.skip(f"{_tool} not installed (make deps)", allow_module_level=True)

STATIC = "network.static={address: 192.168.50.10/24, gateway: 192.168.50.1, dns: [192.168.50.1]}"


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
def installed(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    wd = tmp_path_factory.mktemp(f"installed-{request.param}")
    extra = nodedisk.repo_overrides(gpu=True) + ([STATIC] if request.param == "static" else [])
    profile = load_profile("onprem", None, extra)
    tree = render_site(profile, wd / "tree").path
    with GUESTS.hold(1):  # host work of about a core, beside the lane's guests
        tarball = rootfs.build_rootfs(nodedisk.ROOTFS_EXTRA)
        root = rootfs.extract_rootfs(tarball, wd / "root")
        standins.build_standin_repo(root / nodedisk.REPO_IN_ROOT.lstrip("/"),
                                    **nodedisk.standin_versions(profile))  # fmt: skip
        installer.install(root, tree, wd, tarball)
    return request.param, root


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


# -- one installed system, two seeds: two nodes ----------------------------------------------
def test_one_installed_iso_two_seeds_two_static_nodes_join(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The root installed by the stand-in installer (the onprem ISO's late-commands), booted
    twice by `builder boot-test --node-seed-only --static`: each node gets only what
    `builder seed` writes (host name, one-time token, a static address). Both must come up
    with the seed's host name and address and join with distinct overlay addresses."""
    from tests.boot.conftest import cli_boot_test, node_boot_missing
    from tests.support.reportchecks import check_joined

    missing = node_boot_missing()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    wd = tmp_path_factory.mktemp("iso-two-seeds")
    with GUESTS.hold(1):  # reused from the cache, else built: host work of about a core
        s = nodedisk.prepare_site("onprem", wd / "prep", installed=True)
    out = cli_boot_test("onprem", wd, *s.boot_args(), "--node-seed-only", "--static",
                         "--nodes", "2", "--no-reboot")  # fmt: skip
    res = out["result"]
    assert res is not None, out["stderr"][-4000:]
    assert out["rc"] == 0 and res["problems"] == [], "\n".join(res["problems"])
    names = [n["node"] for n in res["nodes"]]
    assert names == ["onprem-node1", "onprem-node2"] and all(n["joined"] for n in res["nodes"])
    assert len({n["address"] for n in res["nodes"]}) == 2
    for name, r in zip(names, out["reports"], strict=True):
        assert r["hostname"] == name  # from the seed, not the installer's onprem-node
        assert r["addresses"]["eth0"] == [res["static_addresses"][name]]
        assert check_joined(r, s.expect) == []
