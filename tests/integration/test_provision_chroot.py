"""The real provisioning scripts in a Debian chroot against the STAND-IN apt repository.

Debian bookworm (mmdebstrap, cached) stands in for Ubuntu; builder/standins.py builds
signed stand-in .debs named like the real packages (with newer decoy versions, so a pin
that does not hold is caught). Each root is provisioned twice to prove idempotence.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from packer_site import render_standin_site

from builder.run import run, which
from tests.support.rootfs import CHROOT_EXCLUDES, build_rootfs, extract_rootfs
from tests.support.standins import build_standin_repo

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    pytest.skip("chroot provisioning needs root (CI runs as root)", allow_module_level=True)
for tool in ("mmdebstrap", "dpkg-deb", "dpkg-scanpackages", "gpg"):
    if not which(tool):
        pytest.skip(f"{tool} not installed (make deps)", allow_module_level=True)

SCRIPT = "/nodeforge/{site}/scripts/provision.sh"
WATCHED = [
    "etc/apt/sources.list.d",
    "etc/apt/preferences.d",
    "etc/apt/keyrings",
    "etc/crio",
    "etc/containers/registries.conf.d",
    "etc/modules-load.d",
    "etc/sysctl.d",
    "etc/systemd/system",
    "etc/systemd/timesyncd.conf.d",
    "etc/nodeforge",
    "etc/nodeforge-release",
    "etc/fstab",
    "usr/lib/nodeforge",
    "etc/machine-id",
]


def chroot_run(root: Path, *argv: str, env: dict[str, str] | None = None):
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return run(
        [
            "env",
            "-i",
            *[f"{k}={v}" for k, v in {**base, **(env or {})}.items()],
            "chroot",
            root,
            *argv,
        ],
        check=False,
    )


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for rel in WATCHED:
        p = root / rel
        paths = [p] if not p.is_dir() else sorted(x for x in p.rglob("*"))
        for f in paths:
            key = str(f.relative_to(root))
            if f.is_symlink():
                out[key] = "-> " + os.readlink(f)
            elif f.is_file():
                out[key] = hashlib.sha256(f.read_bytes()).hexdigest() + f" {f.stat().st_mode:o}"
    return out


@pytest.fixture(scope="module")
def rootfs_tar() -> Path:
    return build_rootfs()


def _provisioned_root(
    tmp: Path, tar: Path, site: str, separate_repos: bool
) -> Iterator[tuple[Path, list]]:
    root = extract_rootfs(tar, tmp / "root", CHROOT_EXCLUDES)
    repo = build_standin_repo(root / "srv/repo")
    if separate_repos:  # one URL per repository, as upstream (k8s, CRI-O, NVIDIA)
        for name in ("kubernetes", "crio", "nvidia"):
            (root / "srv" / name).symlink_to("repo")
        urls = {name: f"file:///srv/{name}/" for name in ("kubernetes", "crio", "nvidia")}
    else:  # one offline mirror serving every repository from one URL
        urls = {name: "file:///srv/repo/" for name in ("kubernetes", "crio", "nvidia")}
    render_standin_site(site, root / "nodeforge" / site, urls, "file:///srv/repo/Release.key")
    # a build host with umask 077: the overlay's directories must not leak onto /etc
    for d in (root / "nodeforge" / site / "files").rglob("*"):
        if d.is_dir():
            d.chmod(0o700)
    (root / "nodeforge" / site / "files").chmod(0o700)
    # an fstab swap entry and ssh host keys, as an installed system has
    with open(root / "etc/fstab", "a") as fh:
        fh.write("/swap.img none swap sw 0 0\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("x")
    run(["mount", "-t", "proc", "proc", root / "proc"])
    try:
        first = chroot_run(root, "bash", SCRIPT.format(site=site))
        snap1 = snapshot(root)
        second = chroot_run(root, "bash", SCRIPT.format(site=site))
        snap2 = snapshot(root)
        yield root, [first, second, snap1, snap2, repo]
    finally:
        run(["umount", "-l", root / "proc"], check=False)
        shutil.rmtree(tmp / "root", ignore_errors=True)


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory, rootfs_tar):
    yield from _provisioned_root(tmp_path_factory.mktemp("gpu"), rootfs_tar, "onprem", True)


@pytest.fixture(scope="module")
def cpu_root(tmp_path_factory, rootfs_tar):
    yield from _provisioned_root(tmp_path_factory.mktemp("cpu"), rootfs_tar, "aws", False)


def dpkg_version(root: Path, pkg: str) -> str:
    r = chroot_run(root, "dpkg-query", "-W", "-f=${Version}", pkg)
    return r.stdout if r.returncode == 0 else ""


def test_both_runs_succeed_and_change_nothing_the_second_time(gpu_root):
    root, (first, second, snap1, snap2, _) = gpu_root
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert snap1 == snap2
    assert "etc/apt/keyrings/nodeforge-kubernetes.gpg" in snap1
    # detected as a chroot: nothing applied to the host's kernel, nothing started
    assert "chroot: modules and sysctls take effect on boot" in first.stderr


def test_repositories_keyrings_and_pins(gpu_root):
    root, _ = gpu_root
    for name in ("kubernetes", "crio", "nvidia"):
        src = (root / f"etc/apt/sources.list.d/nodeforge-{name}.list").read_text()
        keyring = f"/etc/apt/keyrings/nodeforge-{name}.gpg"
        assert src == f"deb [signed-by={keyring}] file:///srv/{name}/ /\n"
        keyring = root / f"etc/apt/keyrings/nodeforge-{name}.gpg"
        assert not keyring.read_bytes().startswith(b"-----BEGIN")  # dearmored
        shown = run(["gpg", "--show-keys", keyring]).stdout
        assert "nodeforge stand-in repo" in shown
    pin = (root / "etc/apt/preferences.d/nodeforge-kubernetes").read_text()
    assert "Package: kubeadm kubelet kubectl\nPin: version 1.35.0-*\nPin-Priority: 1001" in pin
    assert "Pin: version 1.35.*" in (root / "etc/apt/preferences.d/nodeforge-crio").read_text()
    assert "Pin: version 1.18.0-*" in (root / "etc/apt/preferences.d/nodeforge-nvidia").read_text()


def test_exact_versions_installed_and_held(gpu_root):
    root, (*_, repo) = gpu_root
    # the repo also offers 1.35.1 and 1.36.0 (decoys): the pins must win
    assert "1.35.1-1.1" in repo.packages["kubeadm"]
    for pkg in ("kubeadm", "kubelet", "kubectl"):
        assert dpkg_version(root, pkg) == "1.35.0-1.1"
    assert dpkg_version(root, "cri-o") == "1.35.0-1.1"
    assert dpkg_version(root, "nvidia-container-toolkit") == "1.18.0-1"
    assert dpkg_version(root, "nvidia-driver-570-server") == "570.195.03-0ubuntu0.24.04.1"
    held = set(chroot_run(root, "apt-mark", "showhold").stdout.split())
    assert {
        "kubeadm",
        "kubelet",
        "kubectl",
        "cri-o",
        "nvidia-driver-570-server",
        "nvidia-container-toolkit",
    } <= held


def test_services_enabled_not_started(gpu_root):
    root, _ = gpu_root
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("crio", "kubelet", "nodeforge-enroll", "nodeforge-gpu-check"):
        assert (wants / f"{unit}.service").is_symlink(), unit
    assert (root / "etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service").exists()
    assert os.readlink(root / "etc/systemd/system/swap.target") == "/dev/null"
    wait = root / "etc/systemd/system/kubelet.service.d/05-nodeforge-wait-for-join.conf"
    assert "ConditionPathExists=/var/lib/kubelet/config.yaml" in wait.read_text()
    # a chroot starts nothing: the stand-in daemons never ran
    log = root / "var/log/nodeforge-standins.log"
    assert not log.exists() or "crio" not in log.read_text()


def test_crio_and_nvidia_runtime_dropins(gpu_root):
    root, _ = gpu_root
    crio = (root / "etc/crio/crio.conf.d/10-nodeforge.conf").read_text()
    assert 'cgroup_manager = "systemd"' in crio
    assert 'pause_image = "registry.k8s.io/pause:3.10"' in crio
    assert 'insecure_registries = ["registry.lab:5000"]' in crio
    mirrors = (root / "etc/containers/registries.conf.d/90-nodeforge.conf").read_text()
    assert 'prefix = "docker.io"' in mirrors
    assert mirrors.count("[[registry.mirror]]") == 2 and 'location = "mirror2.lab"' in mirrors
    nv = (root / "etc/crio/crio.conf.d/99-nodeforge-nvidia.conf").read_text()
    assert 'default_runtime = "nvidia"' in nv
    assert 'runtime_path = "/usr/bin/nvidia-container-runtime"' in nv
    check = (root / "usr/lib/nodeforge/gpu-check").read_text()
    assert "0x10de" in check and "nvidia.com/gpu.present=true" in check


def test_gpu_check_labels_only_with_a_gpu(gpu_root):
    root, _ = gpu_root
    kubelet = root / "etc/default/kubelet"
    label = "--node-labels=nvidia.com/gpu.present=true"
    # no NVIDIA device on the (unmounted, empty) PCI bus of the chroot: no label
    r = chroot_run(root, "/usr/lib/nodeforge/gpu-check")
    assert r.returncode == 0 and "no usable NVIDIA GPU" in r.stdout
    assert label not in kubelet.read_text()
    # a fake PCI device (sysfs is not mounted in the chroot, /sys is a plain directory):
    # the stand-in nvidia-smi sees it too, so the label is added and the CDI spec generated
    dev = root / "sys/bus/pci/devices/0000:01:00.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    (dev / "class").write_text("0x030200\n")
    try:
        r = chroot_run(root, "/usr/lib/nodeforge/gpu-check")
        assert r.returncode == 0 and "NVIDIA GPU present" in r.stdout
        text = kubelet.read_text()
        assert f'KUBELET_EXTRA_ARGS="{label}"' in text
        assert text.startswith("# kubelet defaults")  # the rendered comment is kept
        chroot_run(root, "/usr/lib/nodeforge/gpu-check")  # idempotent
        assert kubelet.read_text() == text
        log = (root / "var/log/nodeforge-standins.log").read_text()
        assert "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml" in log
    finally:
        shutil.rmtree(root / "sys/bus")
    r = chroot_run(root, "/usr/lib/nodeforge/gpu-check")  # GPU gone: label removed
    assert label not in kubelet.read_text()


def test_modules_sysctls_swap_time(gpu_root):
    root, _ = gpu_root
    mods = (root / "etc/modules-load.d/90-nodeforge.conf").read_text().splitlines()
    assert mods[1:] == ["overlay", "br_netfilter", "nf_conntrack"]
    sysctl = (root / "etc/sysctl.d/90-nodeforge.conf").read_text()
    for line in (
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.ipv4.ip_forward = 1",
        "vm.overcommit_memory = 1",
    ):
        assert line in sysctl
    fstab = (root / "etc/fstab").read_text()
    assert "# nodeforge: swap off: /swap.img none swap sw 0 0" in fstab
    assert "\n/swap.img" not in fstab
    ntp = (root / "etc/systemd/timesyncd.conf.d/10-nodeforge.conf").read_text()
    assert "NTP=ntp1.example.net ntp2.example.net" in ntp
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"


def test_overlay_and_identity_cleanup(gpu_root):
    root, _ = gpu_root
    assert (root / "etc").stat().st_mode & 0o777 == 0o755
    assert (root / "etc/systemd/system").stat().st_mode & 0o777 == 0o755
    assert (root / "etc/nodeforge").stat().st_mode & 0o777 == 0o755  # created, umask 022
    assert (root / "etc/nodeforge/hub-ca.pem").stat().st_mode & 0o777 == 0o644
    node = json.loads((root / "etc/nodeforge/node.json").read_text())
    assert node["site"] == "onprem"
    assert (root / "etc/nodeforge/hub-ca.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    assert os.access(root / "usr/lib/nodeforge/nodeforge-enroll", os.X_OK)
    assert (root / "etc/machine-id").stat().st_size == 0
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert not list((root / "var/lib/apt/lists").glob("*_Packages"))
    assert not (root / "var/lib/cloud/instance").exists()


def test_release_file(gpu_root):
    root, _ = gpu_root
    rel = dict(
        line.split("=", 1) for line in (root / "etc/nodeforge-release").read_text().splitlines()
    )
    env = dict(
        line.split("=", 1)
        for line in (root / "etc/nodeforge/provision.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert rel["SITE"] == '"onprem"'
    assert rel["PROFILE_HASH"] == f'"{env["NF_PROFILE_HASH"]}"'
    assert rel["BUILDER_COMMIT"] == f'"{env["NF_BUILDER_COMMIT"]}"'
    assert rel["BUILD_TIME"] == f'"{env["NF_BUILD_TIME"]}"'
    assert rel["BUILD_DATE"].startswith('"20') and rel["BUILD_DATE"].endswith('Z"')
    assert rel["KUBERNETES_VERSION"] == '"1.35.0-1.1"'
    assert rel["CRIO_VERSION"] == '"1.35.0-1.1"'
    assert rel["NVIDIA_DRIVER_VERSION"] == '"570.195.03-0ubuntu0.24.04.1"'


def test_non_gpu_profile_skips_nvidia(cpu_root):
    root, (first, second, snap1, snap2, _) = cpu_root
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0 and snap1 == snap2
    assert "not a GPU profile, nothing to do" in first.stderr
    # one mirror URL for CRI-O and Kubernetes: one list, one keyring
    lists = sorted(p.name for p in (root / "etc/apt/sources.list.d").glob("nodeforge-*"))
    assert lists == ["nodeforge-crio.list"]
    assert "is already configured in /etc/apt/sources.list.d/nodeforge-crio.list" in first.stderr
    assert not (root / "etc/apt/sources.list.d/nodeforge-nvidia.list").exists()
    assert not (root / "etc/crio/crio.conf.d/99-nodeforge-nvidia.conf").exists()
    assert dpkg_version(root, "nvidia-container-toolkit") == ""
    assert dpkg_version(root, "kubeadm") == "1.35.0-1.1"


def test_unavailable_pinned_version_fails_loudly(cpu_root):
    root, _ = cpu_root
    env = {"NF_PROVISION_ENV": "/nodeforge/aws/scripts/provision.env"}
    r = chroot_run(
        root,
        "bash",
        "-c",
        "set -a; . $NF_PROVISION_ENV; NF_K8S_VERSION=1.35.7; "
        "bash /nodeforge/aws/scripts/install-kubernetes.sh",
        env=env,
    )
    assert r.returncode != 0
    assert "profile wants 1.35.7-*" in r.stderr
