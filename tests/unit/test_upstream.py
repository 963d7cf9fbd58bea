"""The code agrees with the upstream register (UPSTREAM.md, machine-readable block).

Values in profiles, builder defaults, provisioning scripts, templates, Packer templates and
the stand-in packages must be the ones the register records from upstream sources; a test
here fails when one drifts. Expected values come from the register, never from the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from builder.site import render
from builder.site.profile import load_profile
from tests.support import rootfs
from tests.support.standins import crio_shipped_dropin, register

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "packer" / "scripts"
REG = register()


def yaml_file(rel: str) -> dict:
    data = yaml.safe_load((REPO / rel).read_text())
    assert isinstance(data, dict)
    return data


def test_register_rows_have_source_and_date() -> None:
    text = (REPO / "UPSTREAM.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| -")]
    facts = [r for r in rows if r.count("|") == 5 and not r.startswith(("| fact", "| short"))]
    assert len(facts) > 40
    for row in facts:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[3]):
            assert cells[2], row  # a source
        else:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[-1]), row


# -- finding 1: the CRI-O repository ------------------------------------------------------
def test_crio_repository_is_the_register_one() -> None:
    base = yaml_file("profiles/base.yaml")
    assert base["crio"]["apt"]["url"] == REG["crio"]["apt_url"]
    assert base["crio"]["apt"]["key_url"] == REG["crio"]["apt_key_url"]
    assert "pkgs.k8s.io/addons:/cri-o" not in (REPO / "profiles/base.yaml").read_text()


def test_kubernetes_repository_is_the_register_one() -> None:
    base = yaml_file("profiles/base.yaml")
    assert base["kubernetes"]["apt"]["url"] == REG["kubernetes"]["apt_url"]
    assert base["kubernetes"]["apt"]["key_url"] == REG["kubernetes"]["apt_key_url"]


def test_rendered_crio_repository_for_the_minor() -> None:
    env = render.provision_env(load_profile("aws"), 0)
    minor = env["NF_CRIO_VERSION"]
    assert env["NF_CRIO_APT_URL"] == REG["crio"]["apt_url"].format(minor=minor)
    assert env["NF_CRIO_APT_KEY_URL"] == REG["crio"]["apt_key_url"].format(minor=minor)


def test_nvidia_toolkit_repository_and_branch_defaults() -> None:
    nv = yaml_file("builder/site/defaults.yaml")["gpu"]["nvidia"]
    assert nv["apt"]["url"] == REG["nvidia"]["toolkit_apt_url"]
    assert nv["apt"]["key_url"] == REG["nvidia"]["toolkit_apt_key_url"]
    assert nv["driver_branch"] == REG["nvidia"]["driver_branch"]
    assert load_profile("onprem").get("gpu.nvidia.driver_branch") == REG["nvidia"]["driver_branch"]


def test_pause_image_is_the_kubeadm_one() -> None:
    for rel in ("profiles/base.yaml", "builder/site/defaults.yaml"):
        assert yaml_file(rel)["crio"]["pause_image"] == REG["kubernetes"]["pause_image"], rel


def test_kubeadm_api_version_in_the_agent() -> None:
    agent = (REPO / "builder/node/agent.py").read_text()
    assert f"apiVersion: {REG['kubernetes']['kubeadm_api']}" in agent


# -- Packer ---------------------------------------------------------------------------------
def test_packer_source_ami_owner_and_name() -> None:
    hcl = (REPO / "packer/variables.pkr.hcl").read_text()
    m = re.search(r'variable "aws_source_ami_owner" \{[^}]*default\s*=\s*"(\d+)"', hcl)
    assert m and m.group(1) == REG["ubuntu"]["ami_owner"]
    main = (REPO / "packer/nodeforge.pkr.hcl").read_text()
    want = REG["ubuntu"]["ami_name"].format(
        codename="${var.ubuntu_codename}", release="${var.ubuntu_release}"
    )
    assert f'"{want}"' in main


def test_packer_ami_login_and_root_device() -> None:
    hcl = (REPO / "packer/variables.pkr.hcl").read_text()
    m = re.search(r'variable "ssh_username" \{[^}]*default\s*=\s*"([^"]+)"', hcl)
    assert m and m.group(1) == REG["ubuntu"]["ami_ssh_username"]
    main = (REPO / "packer/nodeforge.pkr.hcl").read_text()
    assert f'device_name           = "{REG["ubuntu"]["ami_root_device"]}"' in main


def test_packer_ami_enforces_imdsv2() -> None:
    main = (REPO / "packer/nodeforge.pkr.hcl").read_text()
    assert re.search(
        r'imds_support\s*=\s*"' + re.escape(REG["packer_amazon"]["imds_support"]), main
    )
    plugins = (REPO / "packer/plugins/required.pkr.hcl").read_text()
    m = re.search(r'amazon = \{[^}]*version\s*=\s*">= ([0-9.]+)"', plugins)
    assert m
    have = tuple(int(x) for x in m.group(1).split("."))
    need = tuple(int(x) for x in REG["packer_amazon"]["imds_support_min_plugin"].split("."))
    assert have >= need


# -- finding 2: GPU nodes keep crun as the default; nvidia is a handler -----------------------
def nvidia_dropin() -> str:
    tree = render.render_files(load_profile("onprem"))
    paths = [p for p in tree if p.startswith("files/etc/crio/crio.conf.d/") and "nvidia" in p]
    assert len(paths) == 1, paths
    return tree[paths[0]][0].decode()


def test_nvidia_is_a_handler_not_the_default_runtime() -> None:
    text = nvidia_dropin()
    assert "default_runtime" not in text
    for script in SCRIPTS.glob("*.sh"):
        assert 'default_runtime = "nvidia"' not in script.read_text(), script.name


def test_nvidia_handler_is_complete() -> None:
    import tomllib

    data = tomllib.loads(nvidia_dropin())
    handlers = data["crio"]["runtime"]["runtimes"]
    assert list(handlers) == [REG["nvidia"]["runtime_handler"]]
    h = handlers[REG["nvidia"]["runtime_handler"]]
    # a runtime table replaces the handler whole: every path must be stated
    assert h["runtime_path"] == REG["nvidia"]["runtime_binary"]
    assert h["monitor_path"] == REG["crio"]["conmon"]
    assert (
        h["runtime_root"] == REG["crio"]["runtimes"][REG["crio"]["default_runtime"]]["runtime_root"]
    )
    assert h.get("runtime_type", "oci") == "oci"


def test_nvidia_runtime_finds_crio_low_level_runtimes() -> None:
    text = (SCRIPTS / "install-nvidia.sh").read_text()
    want = ":".join(h["runtime_path"] for h in REG["crio"]["runtimes"].values())
    assert f"nvidia-container-runtime.runtimes={want}" in text
    assert "nvidia-ctk config --in-place" in text or "config --in-place" in text


def test_runtimeclass_manifest_matches_the_handler() -> None:
    doc = yaml_file("packer/kubernetes/runtimeclass-nvidia.yaml")
    assert doc["apiVersion"] == "node.k8s.io/v1" and doc["kind"] == "RuntimeClass"
    assert doc["metadata"]["name"] == REG["nvidia"]["runtime_class"]
    assert doc["handler"] == REG["nvidia"]["runtime_handler"]
    selector = doc["scheduling"]["nodeSelector"]
    check = (SCRIPTS / "install-nvidia.sh").read_text()
    for k, v in selector.items():
        assert f"{k}={v}" in check  # the label gpu-check puts on GPU nodes


# -- finding 3: signed precompiled modules, flavour of the booted kernel ---------------------
@pytest.mark.parametrize(
    ("site", "sets", "flavour"),
    [
        ("onprem", [], "iso"),
        ("aws", ["gpu.enabled=true"], "ami"),
        ("onprem", ["target=qcow2"], "qcow2"),
    ],
)
def test_nvidia_packages_are_the_signed_ones(site: str, sets: list[str], flavour: str) -> None:
    profile = load_profile(site, overrides=sets)
    env = render.provision_env(profile, 0)
    n = REG["nvidia"]
    branch = profile.get("gpu.nvidia.driver_branch")
    variant = n["variant_suffix"][profile.get("gpu.nvidia.variant")]
    fmt = {"branch": branch, "variant": variant, "utils_variant": variant}
    assert env["NF_NVIDIA_KERNEL_FLAVOUR"] == n["kernel_flavour"][flavour]
    assert env["NF_NVIDIA_MODULES_PACKAGE"] == n["modules_package"].format(
        **fmt, flavour=n["kernel_flavour"][flavour]
    )
    assert env["NF_NVIDIA_DRIVER_PACKAGE"] == n["userspace_package"].format(**fmt)
    assert env["NF_NVIDIA_UTILS_PACKAGE"] == n["utils_package"].format(**fmt)
    for avoided in n["dkms_packages_avoided"]:
        assert avoided.format(**fmt) not in env.values()


def test_install_nvidia_installs_the_rendered_packages_only() -> None:
    text = (SCRIPTS / "install-nvidia.sh").read_text()
    for var in ("NF_NVIDIA_MODULES_PACKAGE", "NF_NVIDIA_DRIVER_PACKAGE", "NF_NVIDIA_UTILS_PACKAGE"):
        assert f"${var}" in text or f"${{{var}" in text
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    installs = [ln for ln in code if "apt_install" in ln or "apt-get install" in ln]
    assert installs and not any("nvidia-driver" in ln or "nvidia-dkms" in ln for ln in installs)
    assert not any("nvidia-driver-$" in ln for ln in code)


# -- finding 4: what the agent needs is installed on every target ----------------------------
def test_provisioning_installs_what_the_image_may_lack() -> None:
    text = (SCRIPTS / "provision.sh").read_text()
    m = re.search(r"^base_packages=\(([^)]*)\)", text, flags=re.M)
    assert m, "provision.sh: no base_packages=(…) list"
    assert set(REG["ubuntu"]["installed_by_provisioning"]) <= set(m.group(1).split())
    # installed unconditionally: not only when curl or gpg is missing
    line = next(ln for ln in text.splitlines() if '"${base_packages[@]}"' in ln)
    assert not line.lstrip().startswith("if ")


def test_standin_base_image_is_as_bare_as_the_cloud_image() -> None:
    for pkg in REG["ubuntu"]["installed_by_provisioning"]:
        if pkg == "wireguard-tools":  # NOT CONFIRMED in the cloud image: leave it out
            assert pkg not in rootfs.PACKAGES


# -- stand-ins ------------------------------------------------------------------------------
def test_standin_crio_ships_the_real_dropin_settings() -> None:
    import tomllib

    data = tomllib.loads(crio_shipped_dropin(REG))
    rt = data["crio"]["runtime"]
    assert rt["default_runtime"] == REG["crio"]["default_runtime"]
    for name, h in REG["crio"]["runtimes"].items():
        assert rt["runtimes"][name] == {**h, "monitor_path": REG["crio"]["conmon"]}


# -- subiquity: the installed system's first boot must read the per-node seed ----------------
def test_autoinstall_lets_the_seed_be_read() -> None:
    tree = render.render_files(load_profile("onprem"))
    auto = yaml.safe_load(tree["cloud-init/autoinstall.yaml"][0])
    cmds = auto["late-commands"]
    m = [
        (i, re.search(r"/target(/etc/cloud/cloud\.cfg\.d/[^ ]+\.cfg)", c))
        for i, c in enumerate(cmds)
        if "datasource_list" in c
    ]
    assert m and m[0][1], cmds
    index, found = m[0]
    assert found is not None
    # cloud.cfg.d is merged in lexical order: ours must sort after subiquity's file
    assert Path(found.group(1)).name > "99-installer.cfg"
    assert "datasource_list: [ NoCloud, None ]" in cmds[index]
    provision = next(i for i, c in enumerate(cmds) if "provision.sh" in c)
    assert index < provision


# -- audit (issue 11, second pass) ----------------------------------------------------------
def test_standin_crio_ships_the_real_registries_dropin() -> None:
    from tests.support import standins

    c = REG["crio"]
    crio = next(p for p in standins._specs(standins.DEFAULT_VERSIONS) if p.name == "cri-o")
    text = crio.files[c["shipped_registries_dropin"]]
    import tomllib

    want = c["shipped_unqualified_search_registries"]
    assert tomllib.loads(text) == {"unqualified-search-registries": want}
    assert c["shipped_registries_dropin"] in crio.conffiles  # %config(noreplace)


def test_our_registries_dropin_leaves_the_search_list_to_the_package() -> None:
    # drop-ins merge [[registry]] tables by prefix; unqualified-search-registries is replaced
    # only by a file that sets it: ours must not, or short names stop resolving via docker.io
    import tomllib

    profile = load_profile(
        "onprem",
        overrides=[
            "crio.registry_mirrors=[mirror.example:5000]",
            "crio.insecure_registries=[reg.example:5000]",
        ],
    )
    tree = render.render_files(profile)
    (path,) = [p for p in tree if p.startswith("files/etc/containers/registries.conf.d/")]
    data = tomllib.loads(tree[path][0].decode())
    assert "unqualified-search-registries" not in data
    assert {r["prefix"] for r in data["registry"]} >= {"docker.io", "reg.example:5000"}


def test_packer_ami_options_within_the_plugins_limits() -> None:
    a = REG["packer_amazon"]
    schema = yaml_file("builder/site/schema/profile.schema.json")
    enum = schema["properties"]["aws"]["properties"]["ssh_interface"]["enum"]
    assert set(enum) <= set(a["ssh_interfaces"])
    main = (REPO / "packer/nodeforge.pkr.hcl").read_text()
    iops = int(re.search(r"\n\s*iops\s*=\s*(\d+)", main).group(1))  # type: ignore[union-attr]
    tput = int(re.search(r"\n\s*throughput\s*=\s*(\d+)", main).group(1))  # type: ignore[union-attr]
    assert a["gp3_iops"][0] <= iops <= a["gp3_iops"][1]
    assert a["gp3_throughput"][0] <= tput <= a["gp3_throughput"][1]
    assert 'volume_type           = "gp3"' in main


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("-")[0].split("."))


def test_nvidia_toolkit_default_has_the_behaviour_we_rely_on() -> None:
    # jit-cdi for "auto", runtimes ["runc", "crun"]: both from 1.18.0 (1.17.x: legacy mode,
    # docker-runc first); the default is the release the register's NCT facts were read at
    n = REG["nvidia"]
    have = yaml_file("builder/site/defaults.yaml")["gpu"]["nvidia"]["container_toolkit_version"]
    assert have == n["toolkit_version"]
    assert _v(have) >= _v(n["toolkit_min_version"])


def test_a_toolkit_older_than_the_behaviour_we_rely_on_is_refused() -> None:
    from builder.errors import BuilderError

    old = "gpu.nvidia.container_toolkit_version='1.17.8'"
    with pytest.raises(BuilderError) as exc:
        load_profile("onprem", overrides=[old])
    assert "gpu.nvidia.container_toolkit_version" in str(exc.value)
    assert REG["nvidia"]["toolkit_min_version"] in str(exc.value)
    ok = f"gpu.nvidia.container_toolkit_version='{REG['nvidia']['toolkit_min_version']}'"
    assert load_profile("onprem", overrides=[ok])


def test_autoinstall_installs_the_kernel_the_modules_are_built_for() -> None:
    # subiquity's default kernel is "ISO build specific" (a point release may default to
    # HWE); the signed NVIDIA modules are for the generic flavour: name it (UPSTREAM.md)
    tree = render.render_files(load_profile("onprem"))
    auto = yaml.safe_load(tree["cloud-init/autoinstall.yaml"][0])
    assert auto["kernel"] == {"flavor": REG["nvidia"]["kernel_flavour"]["iso"]}
