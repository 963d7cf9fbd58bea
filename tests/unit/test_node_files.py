"""Node files: one renderer per file, and the units ordered the way the node needs.

Every file a node carries from the site profile is rendered once, into the build tree's
``files/`` overlay; the provisioning scripts install that overlay (configure-node.sh) and
never write those files themselves, and the first-boot user-data does not write them again.
The ISO (late-commands) and Packer (upload) paths therefore put the same bytes on the node.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import yaml

from builder.site import render
from builder.site.profile import load_profile

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "packer" / "scripts"
# directories whose files come from the profile: only the overlay writes into them
MANAGED_DIRS = (
    "/etc/modules-load.d",
    "/etc/sysctl.d",
    "/etc/systemd/timesyncd.conf.d",
    "/etc/chrony/sources.d",
    "/etc/crio/crio.conf.d",
    "/etc/containers/registries.conf.d",
    "/etc/systemd/system/kubelet.service.d",
)
MIRRORS = "crio.registry_mirrors=['docker.io=mirror.lab:5000,mirror2.lab', quay.io=q.lab]"
SETS = [
    MIRRORS,
    "crio.insecure_registries=[registry.lab:5000, quay.io]",
    "time_sync.servers=[ntp1.example.net]",
    "crio.cgroup_manager=cgroupfs",
]


def unit(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def words(cp: configparser.ConfigParser, section: str, key: str) -> set[str]:
    return set(cp.get(section, key, fallback="").split())


@pytest.fixture(scope="module")
def tree() -> dict[str, tuple[bytes, int]]:
    return render.render_files(load_profile("onprem", overrides=SETS))


# -- finding 6: one renderer per node file ---------------------------------------------------
@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_scripts_do_not_write_profile_files(script: Path) -> None:
    code = "\n".join(
        ln for ln in script.read_text().splitlines() if not ln.lstrip().startswith("#")
    )
    for d in MANAGED_DIRS:
        assert d not in code, f"{script.name} writes into {d}: the overlay renders it"


def test_user_data_does_not_rewrite_image_files(tree: dict[str, tuple[bytes, int]]) -> None:
    doc = yaml.safe_load(tree["cloud-init/user-data"][0])
    overlay = {rel.removeprefix("files") for rel in tree if rel.startswith("files/")}
    written = {f["path"] for f in doc.get("write_files") or []}
    assert not written & overlay


def test_iso_and_packer_payloads_are_the_same_bytes(tree: dict[str, tuple[bytes, int]]) -> None:
    packer = {rel: v for rel, v in tree.items() if rel.startswith(("files/", "scripts/"))}
    iso = {
        rel.removeprefix("iso/nodeforge/"): v
        for rel, v in tree.items()
        if rel.startswith("iso/nodeforge/")
    }
    assert packer == iso


def test_overlay_has_every_profile_file(tree: dict[str, tuple[bytes, int]]) -> None:
    for rel in (
        "files/etc/modules-load.d/90-nodeforge.conf",
        "files/etc/sysctl.d/90-nodeforge.conf",
        "files/etc/crio/crio.conf.d/20-nodeforge.conf",
        "files/etc/containers/registries.conf.d/90-nodeforge.conf",
        "files/etc/systemd/timesyncd.conf.d/10-nodeforge.conf",
        "files/etc/chrony/sources.d/nodeforge.sources",
        "files/etc/systemd/system/kubelet.service.d/20-nodeforge.conf",
    ):
        assert rel in tree, rel


def test_crio_dropin_is_valid_for_either_cgroup_manager() -> None:
    import tomllib

    for manager in ("systemd", "cgroupfs"):
        tree = render.render_files(
            load_profile("aws", overrides=[f"crio.cgroup_manager={manager}"])
        )
        data = tomllib.loads(tree["files/etc/crio/crio.conf.d/20-nodeforge.conf"][0].decode())
        rt = data["crio"]["runtime"]
        assert rt["cgroup_manager"] == manager
        # unset conmon_cgroup is valid for both managers (UPSTREAM.md, CRI-O cgroup manager)
        assert "conmon_cgroup" not in rt


def test_registry_mirrors_keep_every_registry(tree: dict[str, tuple[bytes, int]]) -> None:
    import tomllib

    data = tomllib.loads(
        tree["files/etc/containers/registries.conf.d/90-nodeforge.conf"][0].decode()
    )
    regs = {r["prefix"]: [m["location"] for m in r.get("mirror", [])] for r in data["registry"]}
    assert regs == {
        "docker.io": ["mirror.lab:5000", "mirror2.lab"],
        "quay.io": ["q.lab"],
        "registry.lab:5000": [],
    }
    insecure = {r["prefix"] for r in data["registry"] if r.get("insecure")}
    assert insecure == {"registry.lab:5000", "quay.io"}  # one table per prefix
    for r in data["registry"]:
        assert r["location"] == r["prefix"]


def test_insecure_registries_not_in_the_crio_dropin(tree: dict[str, tuple[bytes, int]]) -> None:
    # CRI-O: "This option is deprecated and no longer effective. Use registries.conf instead."
    text = tree["files/etc/crio/crio.conf.d/20-nodeforge.conf"][0].decode()
    assert "insecure_registries" not in text


# -- finding 5: unit ordering ---------------------------------------------------------------
def test_enrollment_is_ordered_after_crio() -> None:
    cp = unit((REPO / "builder/node/nodeforge-enroll.service").read_text())
    assert "crio.service" in words(cp, "Unit", "After")
    assert "crio.service" in words(cp, "Unit", "Wants")
    assert "kubelet.service" in words(cp, "Unit", "Before")


def test_kubelet_waits_for_the_wireguard_interface(tree: dict[str, tuple[bytes, int]]) -> None:
    iface = load_profile("onprem").get("wireguard.interface")
    cp = unit(tree["files/etc/systemd/system/kubelet.service.d/20-nodeforge.conf"][0].decode())
    after = words(cp, "Unit", "After")
    assert {f"wg-quick@{iface}.service", "nodeforge-enroll.service", "crio.service"} <= after
    assert cp.get("Unit", "ConditionPathExists") == "/var/lib/kubelet/config.yaml"


def test_no_script_writes_units_the_overlay_owns() -> None:
    for script in SCRIPTS.glob("*.sh"):
        assert not re.search(r"kubelet\.service\.d/", script.read_text()), script.name


# -- issue 16: the failover loop runs on real nodes ------------------------------------------
def test_failover_unit_runs_the_shipped_agent_once_joined(
    tree: dict[str, tuple[bytes, int]],
) -> None:
    import json

    cp = unit(tree["files/etc/systemd/system/nodeforge-failover.service"][0].decode())
    argv = cp.get("Service", "ExecStart").split()
    # the agent and the config it runs are the ones the same tree ships
    assert argv[0] == "/usr/bin/python3" and f"files{argv[1]}" in tree
    assert tree[f"files{argv[1]}"][0] == (REPO / "builder/node/agent.py").read_bytes()
    config = argv[argv.index("--config") + 1]
    node = json.loads(tree[f"files{config}"][0])
    assert "--failover" in argv
    # after the join: the marker the agent writes (Config.joined_marker)
    assert cp.get("Unit", "ConditionPathExists") == f"{node['state_dir']}/joined"
    assert "nodeforge-enroll.service" in words(cp, "Unit", "After")
    assert cp.get("Service", "Restart") == "on-failure"
    assert cp.get("Service", "StartLimitIntervalSec", fallback=None) is None  # [Unit] key
    assert cp.get("Unit", "StartLimitIntervalSec") == "0"
    assert cp.get("Install", "WantedBy") == "multi-user.target"
    # the agent starts this very unit after the join (first boot)
    assert (
        'FAILOVER_UNIT = "nodeforge-failover.service"'
        in (REPO / "builder/node/agent.py").read_text()
    )


def test_configure_node_enables_the_failover_unit() -> None:
    text = (SCRIPTS / "configure-node.sh").read_text()
    assert 'enable_unit "$NF_TOOL-failover.service"' in text
