"""The rendered build tree: complete, deterministic, secrets hashed, atomic."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from passlib.hash import sha512_crypt

from builder.errors import BuilderError
from builder.site import render
from builder.site.profile import load_profile

EXPECTED = [
    "cloud-init/autoinstall.yaml",
    "cloud-init/meta-data",
    "cloud-init/user-data",
    "files/etc/crio/crio.conf.d/20-nodeforge.conf",
    "files/etc/default/kubelet",
    "files/etc/modules-load.d/90-nodeforge.conf",
    "files/etc/nodeforge/hub-ca.pem",
    "files/etc/nodeforge/node.json",
    "files/etc/nodeforge/provision.env",
    "files/etc/sysctl.d/90-nodeforge.conf",
    "files/etc/systemd/system/kubelet.service.d/20-nodeforge.conf",
    "files/etc/systemd/system/nodeforge-enroll.service",
    "files/etc/systemd/system/nodeforge-failover.service",
    "files/usr/lib/nodeforge/nodeforge-enroll",
    "iso/nocloud/meta-data",
    "iso/nocloud/user-data",
    "manifest.json",
    "packer/site.auto.pkrvars.json",
    "profile.json",
    "scripts/provision.env",
    "scripts/provision.sh",
]


def libcrypt(password: bytes, setting: bytes) -> str:
    lib = ctypes.CDLL("libcrypt.so.1")  # libxcrypt, as PAM uses it (find_library runs ldconfig)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return bytes(lib.crypt(password, setting)).decode()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("site", ["onprem", "aws"])
def test_tree_is_complete(workdir: Path, site: str) -> None:
    result = render.render_site(load_profile(site))
    assert result.path == workdir / "build" / site
    files = {str(p.relative_to(result.path)) for p in result.path.rglob("*") if p.is_file()}
    missing = [rel for rel in EXPECTED if rel not in files]
    assert not missing
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["site"] == site
    assert manifest["versions"]["kubernetes"] == "1.35.0"
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((result.path / rel).read_bytes()).hexdigest() == digest


def test_render_is_deterministic(workdir: Path) -> None:
    a = render.render_site(load_profile("onprem"), workdir / "a")
    b = render.render_site(load_profile("onprem"), workdir / "b")
    assert tree_digest(a.path) == tree_digest(b.path)
    assert a.input_hash == b.input_hash


def test_source_date_epoch_is_honoured(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tree = render.render_site(load_profile("aws")).path
    node = json.loads((tree / "files/etc/nodeforge/node.json").read_text())
    assert node["build_time"] == 1700000000
    assert "NF_BUILD_TIME=1700000000" in (tree / "scripts/provision.env").read_text()


def test_overlay_carries_modules_sysctls_and_agent(workdir: Path) -> None:
    # the node files live in the files/ overlay only (one renderer per node file, issue 11):
    # the first-boot user-data does not write them again
    tree = render.render_site(load_profile("onprem")).path
    text = (tree / "cloud-init/user-data").read_text()
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert "write_files" not in doc and "runcmd" not in doc
    files = tree / "files"
    assert (files / "etc/modules-load.d/90-nodeforge.conf").read_text().splitlines()[1:] == [
        "overlay",
        "br_netfilter",
    ]
    sysctl = (files / "etc/sysctl.d/90-nodeforge.conf").read_text()
    for line in (
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.bridge.bridge-nf-call-ip6tables = 1",
        "net.ipv4.ip_forward = 1",
        "vm.overcommit_memory = 1",
        "kernel.panic = 10",
    ):
        assert line in sysctl
    agent = files / "usr/lib/nodeforge/nodeforge-enroll"
    assert agent.stat().st_mode & 0o777 == 0o755
    assert agent.read_text() == render.AGENT_SOURCE.read_text()
    node = json.loads((files / "etc/nodeforge/node.json").read_text())
    assert node["labels"]["topology.kubernetes.io/zone"] == "onprem-dc1"
    assert node["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def test_autoinstall_wraps_user_data_and_runs_scripts(workdir: Path) -> None:
    tree = render.render_site(load_profile("onprem")).path
    auto = yaml.safe_load((tree / "cloud-init/autoinstall.yaml").read_text())
    assert auto["version"] == 1
    assert auto["user-data"] == yaml.safe_load((tree / "cloud-init/user-data").read_text())
    assert any("curtin in-target" in c and "provision.sh" in c for c in auto["late-commands"])
    assert auto["identity"]["password"] == "!"  # no password configured: locked
    wrapped = yaml.safe_load((tree / "iso/nocloud/user-data").read_text())
    assert wrapped == {"autoinstall": auto}
    assert (tree / "iso/nodeforge/scripts/provision.sh").exists()


def test_password_is_sha512_crypt_reproducible_and_never_plain(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NF_PW", "correct horse")
    profile = load_profile("onprem", overrides=["admin.password=env:NF_PW"])
    tree = render.render_site(profile).path
    auto = yaml.safe_load((tree / "cloud-init/autoinstall.yaml").read_text())
    hashed = auto["identity"]["password"]
    assert hashed.startswith("$6$rounds=656000$")
    assert sha512_crypt.verify("correct horse", hashed)
    # what the node's PAM will check: libcrypt (glibc/libxcrypt) recomputes the same string
    # from the salt and rounds stored in it; an independent implementation of SHA-512 crypt
    setting = hashed.rsplit("$", 1)[0] + "$"
    assert libcrypt(b"correct horse", setting.encode()) == hashed
    assert libcrypt(b"correct horsf", setting.encode()) != hashed
    # the stored per-site salt: a second render elsewhere gives the same string
    again = render.render_site(profile, workdir / "again").path
    assert (
        yaml.safe_load((again / "cloud-init/autoinstall.yaml").read_text())["identity"]["password"]
        == hashed
    )
    for path in tree.rglob("*"):
        if path.is_file():
            assert b"correct horse" not in path.read_bytes(), path
    other = load_profile("aws", overrides=["admin.password=env:NF_PW"])
    assert render.password_hash(other) != hashed  # each site has its own salt


def test_site_token_is_0600(workdir: Path) -> None:
    (workdir / "tok").write_text("site-token-value\n")
    profile = load_profile("onprem", overrides=["enrollment.site_token=file:tok"])
    tree = render.render_site(profile).path
    token = tree / "files/etc/nodeforge/enroll-token"
    assert token.read_text() == "site-token-value\n"
    assert oct(token.stat().st_mode & 0o777) == "0o600"
    assert "site-token-value" not in (tree / "profile.json").read_text()


def test_provision_env_and_packer_vars(workdir: Path) -> None:
    tree = render.render_site(load_profile("onprem")).path
    env = (tree / "scripts/provision.env").read_text()
    assert "NF_K8S_APT_URL=https://pkgs.k8s.io/core:/stable:/v1.35/deb/" in env
    assert "NF_MODULES='overlay br_netfilter'" in env
    assert "NF_NVIDIA_DRIVER_PACKAGE=nvidia-headless-no-dkms-580-server" in env
    assert "NF_NVIDIA_MODULES_PACKAGE=linux-modules-nvidia-580-server-generic" in env
    aws = render.render_site(load_profile("aws")).path
    pvars = json.loads((aws / "packer/site.auto.pkrvars.json").read_text())
    assert pvars["aws_region"] == "eu-central-1"
    assert pvars["gpu"] is False
    assert "NF_GPU=0" in pvars["provision_env"]
    assert "NF_NVIDIA_DRIVER_PACKAGE" not in (aws / "scripts/provision.env").read_text()


def test_static_network_config(workdir: Path) -> None:
    profile = load_profile(
        "onprem",
        overrides=[
            "network.static={address: 192.168.50.10/24, gateway: 192.168.50.1, dns: [192.168.50.1]}"
        ],
    )
    tree = render.render_site(profile).path
    net = yaml.safe_load((tree / "cloud-init/network-config").read_text())
    eth = net["network"]["ethernets"]["primary"]
    assert eth["addresses"] == ["192.168.50.10/24"]
    assert eth["routes"] == [{"to": "default", "via": "192.168.50.1"}]


def test_failed_render_leaves_previous_tree(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = render.render_site(load_profile("aws")).path
    before = tree_digest(first)

    def boom(*args: object, **kwargs: object) -> str:
        raise BuilderError("template exploded")

    monkeypatch.setattr(render, "hub_ca_pem", boom)
    with pytest.raises(BuilderError):
        render.render_site(load_profile("aws", overrides=["wireguard.mtu=1400"]))
    assert tree_digest(first) == before
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


def test_missing_ca_cert_is_a_clear_error(workdir: Path) -> None:
    profile = load_profile("aws", overrides=["enrollment.ca_cert=null"])
    with pytest.raises(BuilderError) as exc:
        render.render_site(profile)
    assert "enrollment.ca_cert" in exc.value.message
    assert not (workdir / "build" / "aws").exists()


def test_yaml_scalar_filter_round_trips_awkward_text() -> None:
    for text in [
        "plain",
        "two\nlines\n",
        "  leading space\nx",
        "trailing  \n",
        "tab\there\n",
        "no newline\nat end",
        "blank\n\n\nlines\n\n",
        "# not a comment\n",
        "a: b\n",
        "",
        "'quotes\" and \\ back\n",
    ]:
        doc = f"k:\n  - content: {render._to_yaml_scalar(text, 4)}\n    next: 1\n"
        assert yaml.safe_load(doc) == {"k": [{"content": text, "next": 1}]}, repr(text)


def test_render_writes_modes(workdir: Path) -> None:
    tree = render.render_site(load_profile("aws")).path
    assert os.access(tree / "scripts/provision.sh", os.X_OK)
    assert os.access(tree / "files/usr/lib/nodeforge/nodeforge-enroll", os.X_OK)
