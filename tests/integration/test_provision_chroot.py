"""The real provisioning scripts in a Debian chroot against the STAND-IN apt repository.

Debian bookworm (mmdebstrap, cached) stands in for Ubuntu; tests/support/standins.py builds
signed stand-in .debs named like the real packages and behaving like them per UPSTREAM.md
(with newer decoy versions, so a pin that does not hold is caught). The GPU site is
provisioned twice the way the ISO does it (late-commands: the ISO payload copied into the
target, provision.sh run inside) to prove idempotence, and once the way Packer does it
(scripts/ and files/ uploaded to /tmp/nodeforge, NF_* passed in the environment): both must
leave the same bytes on the node. Then containers are started through the configured
runtime chain (stand-in ``crio run-container``) on the GPU image with and without an NVIDIA
device and driver, and on the CPU image.
"""

from __future__ import annotations

import contextlib
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
from tests.support.standins import build_standin_repo, register

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    pytest.skip("chroot provisioning needs root (CI runs as root)", allow_module_level=True)
for tool in ("mmdebstrap", "dpkg-deb", "dpkg-scanpackages", "gpg"):
    if not which(tool):
        pytest.skip(f"{tool} not installed (make deps)", allow_module_level=True)

REG = register()
ISO_DIR = "/var/lib/nodeforge/provision"  # where autoinstall's late-commands copy the payload
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
    "etc/chrony",
    "etc/default/kubelet",
    "etc/nvidia-container-runtime",
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


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory) -> Path:
    """One stand-in repo (one signing key) for every root: keyrings compare equal."""
    return build_standin_repo(tmp_path_factory.mktemp("repo") / "repo").path


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """The rendered build trees (rendered once: both GPU roots get the same tree)."""
    out = {}
    for site, separate in (("onprem", True), ("aws", False)):
        if separate:  # one URL per repository, as upstream (k8s, CRI-O, NVIDIA)
            urls = {name: f"file:///srv/{name}/" for name in ("kubernetes", "crio", "nvidia")}
        else:  # one offline mirror serving every repository from one URL
            urls = dict.fromkeys(("kubernetes", "crio", "nvidia"), "file:///srv/repo/")
        tree = tmp_path_factory.mktemp(site) / site
        render_standin_site(site, tree, urls, "file:///srv/repo/Release.key")
        # a build host with umask 077: the overlay's directories must not leak onto /etc
        for d in [tree / "files", *(tree / "files").rglob("*"), tree / "iso"]:
            if d.is_dir():
                d.chmod(0o700)
        out[site] = tree
    return out


@contextlib.contextmanager
def prepared_root(tmp: Path, tar: Path, repo: Path) -> Iterator[Path]:
    root = extract_rootfs(tar, tmp / "root", CHROOT_EXCLUDES)
    shutil.copytree(repo, root / "srv/repo", symlinks=True)
    for name in ("kubernetes", "crio", "nvidia"):
        (root / "srv" / name).symlink_to("repo")
    # an fstab swap entry and ssh host keys, as an installed system has
    with open(root / "etc/fstab", "a") as fh:
        fh.write("/swap.img none swap sw 0 0\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("x")
    run(["mount", "-t", "proc", "proc", root / "proc"])
    try:
        yield root
    finally:
        run(["umount", "-l", root / "proc"], check=False)
        shutil.rmtree(tmp / "root", ignore_errors=True)


def provision_like_iso(root: Path, tree: Path):
    """autoinstall late-commands: copy the ISO payload into the target, run it, remove it."""
    dest = root / ISO_DIR.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(tree / "iso" / "nodeforge", dest, symlinks=True)
    dest.chmod(0o700)
    try:
        return chroot_run(root, "bash", f"{ISO_DIR}/scripts/provision.sh")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def provision_like_packer(root: Path, tree: Path):
    """Packer: scripts/ and files/ uploaded to /tmp/nodeforge, NF_* in the environment."""
    dest = root / "tmp/nodeforge"
    shutil.copytree(tree / "scripts", dest / "scripts")
    shutil.copytree(tree / "files", dest / "files", symlinks=True)
    env = dict(
        line.split("=", 1)
        for line in (tree / "scripts/provision.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    env = {k: v.strip("'") for k, v in env.items()}
    env["NF_FILES_DIR"] = "/tmp/nodeforge/files"
    try:
        return chroot_run(root, "bash", "/tmp/nodeforge/scripts/provision.sh", env=env)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory, rootfs_tar, repo_dir, trees):
    tmp = tmp_path_factory.mktemp("gpu")
    with prepared_root(tmp, rootfs_tar, repo_dir) as root:
        before = dpkg_version(root, "wireguard-tools")
        first = provision_like_iso(root, trees["onprem"])
        snap1 = snapshot(root)
        second = provision_like_iso(root, trees["onprem"])
        snap2 = snapshot(root)
        yield (
            root,
            {"first": first, "second": second, "snap1": snap1, "snap2": snap2, "wg_before": before},
        )


@pytest.fixture(scope="module")
def gpu_packer_root(tmp_path_factory, rootfs_tar, repo_dir, trees):
    tmp = tmp_path_factory.mktemp("gpu-packer")
    with prepared_root(tmp, rootfs_tar, repo_dir) as root:
        res = provision_like_packer(root, trees["onprem"])
        yield root, {"first": res, "snap1": snapshot(root)}


@pytest.fixture(scope="module")
def cpu_root(tmp_path_factory, rootfs_tar, repo_dir, trees):
    tmp = tmp_path_factory.mktemp("cpu")
    with prepared_root(tmp, rootfs_tar, repo_dir) as root:
        first = provision_like_packer(root, trees["aws"])
        snap1 = snapshot(root)
        second = provision_like_packer(root, trees["aws"])
        yield root, {"first": first, "second": second, "snap1": snap1, "snap2": snapshot(root)}


def dpkg_version(root: Path, pkg: str) -> str:
    r = chroot_run(root, "dpkg-query", "-W", "-f=${db:Status-Abbrev}${Version}", pkg)
    return r.stdout[3:] if r.returncode == 0 and r.stdout[1:2] == "i" else ""


# -- provisioning ---------------------------------------------------------------------------
def test_both_runs_succeed_and_change_nothing_the_second_time(gpu_root):
    root, r = gpu_root
    assert r["first"].returncode == 0, r["first"].stderr[-3000:]
    assert r["second"].returncode == 0, r["second"].stderr[-3000:]
    assert r["snap1"] == r["snap2"]
    assert "etc/apt/keyrings/nodeforge-kubernetes.gpg" in r["snap1"]
    # detected as a chroot: nothing applied to the host's kernel, nothing started
    assert "chroot: modules and sysctls take effect on boot" in r["first"].stderr


def test_iso_and_packer_paths_leave_the_same_bytes(gpu_root, gpu_packer_root, trees):
    root, r = gpu_root
    proot, p = gpu_packer_root
    assert p["first"].returncode == 0, p["first"].stderr[-3000:]
    assert r["snap1"] == p["snap1"]
    # and every overlay file is on the node exactly as rendered
    files = trees["onprem"] / "files"
    for src in (f for f in files.rglob("*") if f.is_file()):
        rel = src.relative_to(files)
        for node in (root, proot):
            got = node / rel
            assert got.read_bytes() == src.read_bytes(), rel
            assert got.stat().st_mode & 0o777 == src.stat().st_mode & 0o777, rel


def test_wireguard_tools_installed_by_provisioning(gpu_root, cpu_root):
    root, r = gpu_root
    assert r["wg_before"] == ""  # the stand-in base does not carry it, as the cloud image may not
    for node in (root, cpu_root[0]):
        assert dpkg_version(node, "wireguard-tools")
        assert (node / "usr/bin/wg-quick").exists()


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
    nv = (root / "etc/apt/preferences.d/nodeforge-nvidia").read_text()
    assert "Pin: version 1.18.0-*" in nv and "nvidia-container-toolkit-base" in nv


def test_exact_versions_installed_and_held(gpu_root):
    root, _ = gpu_root
    for pkg in ("kubeadm", "kubelet", "kubectl"):
        assert dpkg_version(root, pkg) == "1.35.0-1.1"
    assert dpkg_version(root, "cri-o") == "1.35.0-1.1"
    for pkg in ("nvidia-container-toolkit", "nvidia-container-toolkit-base"):
        assert dpkg_version(root, pkg) == "1.18.0-1", pkg
    held = set(chroot_run(root, "apt-mark", "showhold").stdout.split())
    assert {"kubeadm", "kubelet", "kubectl", "cri-o", "nvidia-container-toolkit"} <= held


def test_signed_nvidia_modules_not_dkms(gpu_root):
    root, _ = gpu_root
    drv = "580.173.02-0ubuntu0.24.04.1"
    n = REG["nvidia"]
    fmt = {"branch": "580", "variant": "-server", "utils_variant": "-server"}
    modules = n["modules_package"].format(**fmt, flavour=n["kernel_flavour"]["iso"])
    wanted = [modules, n["userspace_package"].format(**fmt), n["utils_package"].format(**fmt)]
    held = set(chroot_run(root, "apt-mark", "showhold").stdout.split())
    for pkg in wanted:
        assert dpkg_version(root, pkg) == drv, pkg
        assert pkg in held, pkg
    for pkg in n["dkms_packages_avoided"]:
        assert dpkg_version(root, pkg.format(**fmt)) == "", pkg
    assert (root / n["nvidia_smi"].lstrip("/")).exists()


def test_services_enabled_not_started(gpu_root):
    root, _ = gpu_root
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in (
        "crio",
        "kubelet",
        "nodeforge-enroll",
        "nodeforge-failover",
        "nodeforge-gpu-check",
    ):
        assert (wants / f"{unit}.service").is_symlink(), unit
    assert (root / REG["crio"]["unit_dir"].lstrip("/") / REG["crio"]["unit"]).exists()
    assert (root / "etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service").exists()
    assert os.readlink(root / "etc/systemd/system/swap.target") == "/dev/null"
    dropin = root / "etc/systemd/system/kubelet.service.d/20-nodeforge.conf"
    assert "ConditionPathExists=/var/lib/kubelet/config.yaml" in dropin.read_text()
    assert "wg-quick@wg0.service" in dropin.read_text()
    # a chroot starts nothing: the stand-in daemons never ran
    log = root / "var/log/nodeforge-standins.log"
    assert not log.exists() or " crio \n" not in log.read_text()


def test_crio_config_merges_to_crun_default_with_nvidia_handler(gpu_root):
    root, _ = gpu_root
    conf = root / "etc/crio/crio.conf.d"
    assert sorted(p.name for p in conf.iterdir()) == [
        "10-crio.conf",
        "20-nodeforge.conf",
        "99-nodeforge-nvidia.conf",
    ]
    r = chroot_run(root, "crio", "config")
    assert r.returncode == 0, r.stderr
    assert f'default_runtime = "{REG["crio"]["default_runtime"]}"' in r.stdout
    assert "[crio.runtime.runtimes.nvidia]" in r.stdout
    assert f'monitor_path = "{REG["crio"]["conmon"]}"' in r.stdout
    mirrors = (root / "etc/containers/registries.conf.d/90-nodeforge.conf").read_text()
    assert mirrors.count("[[registry.mirror]]") == 2 and 'location = "mirror2.lab"' in mirrors
    assert (
        'prefix = "registry.lab:5000"\nlocation = "registry.lab:5000"\ninsecure = true' in mirrors
    )
    toml = (root / REG["nvidia"]["runtime_config"].lstrip("/")).read_text()
    want = ", ".join(f'"{h["runtime_path"]}"' for h in REG["crio"]["runtimes"].values())
    assert f"runtimes = [{want}]" in toml


# -- containers through the runtime chain ---------------------------------------------------
def run_container(root: Path, *args: str):
    return chroot_run(root, "crio", "run-container", *args)


@contextlib.contextmanager
def nvidia_device(root: Path, driver: bool) -> Iterator[None]:
    """A stand-in NVIDIA GPU on the (unmounted, plain-directory) PCI bus; optionally its
    driver "loaded" (/sys/module/nvidia)."""
    dev = root / "sys/bus/pci/devices/0000:01:00.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    (dev / "class").write_text("0x030200\n")
    if driver:
        (root / "sys/module/nvidia").mkdir(parents=True)
    try:
        yield
    finally:
        shutil.rmtree(root / "sys/bus", ignore_errors=True)
        shutil.rmtree(root / "sys/module", ignore_errors=True)


def test_gpu_image_on_a_cpu_host_starts_containers(gpu_root):
    root, _ = gpu_root
    r = run_container(root)  # the default handler: every pod, CNI and kube-proxy included
    assert r.returncode == 0, r.stderr
    assert "handler crun" in r.stdout and "crun: container" in r.stdout
    # RuntimeClass nvidia, no GPU requested: handed on to crun unchanged
    r = run_container(root, "--runtime-handler", "nvidia")
    assert r.returncode == 0, r.stderr
    assert "handler nvidia" in r.stdout and "crun: container" in r.stdout
    # a GPU requested where there is no driver: the real runtime fails (NVML), so does ours
    r = run_container(root, "--runtime-handler", "nvidia", "--env", "NVIDIA_VISIBLE_DEVICES=all")
    assert r.returncode != 0 and "failed to initialize NVML" in r.stderr


def test_gpu_image_on_a_gpu_host_starts_gpu_containers(gpu_root):
    root, _ = gpu_root
    with nvidia_device(root, driver=True):
        r = run_container(
            root, "--runtime-handler", "nvidia", "--env", "NVIDIA_VISIBLE_DEVICES=all"
        )
        assert r.returncode == 0, r.stderr
        assert "devices all injected" in r.stdout and "crun: container" in r.stdout
        assert run_container(root).returncode == 0


def test_old_wiring_fails_like_the_real_packages(gpu_root):
    """Finding 2 reproduced: nvidia as default runtime, toolkit runtimes left at default."""
    root, _ = gpu_root
    old = root / "etc/crio/crio.conf.d/99-old-default-nvidia.conf"
    toml = root / REG["nvidia"]["runtime_config"].lstrip("/")
    saved = toml.read_text()
    old.write_text('[crio.runtime]\ndefault_runtime = "nvidia"\n')
    toml.write_text("")
    try:
        r = run_container(root)
        assert r.returncode != 0
        assert REG["nvidia"]["error_no_runtime"].format(candidates="runc crun") in r.stderr
    finally:
        old.unlink()
        toml.write_text(saved)


def test_crio_refuses_a_handler_without_monitor_path(gpu_root):
    """What nvidia-ctk writes when /etc/crio/crio.conf is missing (NCT issue #681)."""
    root, _ = gpu_root
    bad = root / "etc/crio/crio.conf.d/99-nodeforge-nvidia.conf"
    saved = bad.read_text()
    bad.write_text(
        '[crio.runtime]\ndefault_runtime = "nvidia"\n[crio.runtime.runtimes.nvidia]\n'
        'runtime_path = "/usr/bin/nvidia-container-runtime"\nruntime_type = "oci"\n'
    )
    try:
        r = chroot_run(root, "crio", "config")
        assert r.returncode != 0 and 'exec: "conmon": executable file not found' in r.stderr
    finally:
        bad.write_text(saved)


def test_cpu_image_starts_containers(cpu_root):
    root, r = cpu_root
    assert r["first"].returncode == 0, r["first"].stderr[-3000:]
    assert r["second"].returncode == 0 and r["snap1"] == r["snap2"]
    res = run_container(root)
    assert res.returncode == 0 and "crun: container" in res.stdout, res.stderr
    res = run_container(root, "--runtime-handler", "nvidia")
    assert res.returncode != 0 and "failed to find runtime handler nvidia" in res.stderr


# -- GPU check -------------------------------------------------------------------------------
def test_gpu_check_labels_only_with_a_gpu_and_its_driver(gpu_root):
    root, _ = gpu_root
    kubelet = root / "etc/default/kubelet"
    label = "--node-labels=nvidia.com/gpu.present=true"
    r = chroot_run(root, "/usr/lib/nodeforge/gpu-check")
    assert r.returncode == 0 and "no usable NVIDIA GPU" in r.stdout
    assert label not in kubelet.read_text()
    smi = chroot_run(root, "nvidia-smi", "-L")
    assert smi.returncode != 0 and "couldn't communicate with the NVIDIA driver" in smi.stdout
    with nvidia_device(root, driver=False):  # e.g. Secure Boot refused an unsigned module
        r = chroot_run(root, "/usr/lib/nodeforge/gpu-check")
        assert "driver does not answer" in r.stdout and label not in kubelet.read_text()
    with nvidia_device(root, driver=True):
        r = chroot_run(root, "/usr/lib/nodeforge/gpu-check")
        assert r.returncode == 0 and "NVIDIA GPU present" in r.stdout
        text = kubelet.read_text()
        assert f'KUBELET_EXTRA_ARGS="{label}"' in text
        assert text.startswith("# kubelet defaults")  # the rendered comment is kept
        chroot_run(root, "/usr/lib/nodeforge/gpu-check")  # idempotent
        assert kubelet.read_text() == text
        assert (root / "var/run/cdi/nvidia.yaml").exists() or (
            root / "run/cdi/nvidia.yaml"
        ).exists()
    chroot_run(root, "/usr/lib/nodeforge/gpu-check")  # GPU gone: label removed
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
    assert not (root / ISO_DIR.lstrip("/")).exists()


def test_cleanup_keeps_the_installers_first_boot_config(cpu_root, trees):
    """ISO path: subiquity wrote its cloud-init files (and a clean.d hook that deletes them)
    before late-commands run our scripts; cleanup must not trigger that hook."""
    root, _ = cpu_root
    cfg = root / "etc/cloud/cloud.cfg.d/99-installer.cfg"
    hook = root / "etc/cloud/clean.d/99-installer"
    hook.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("datasource_list: [None]\n")
    hook.write_text(f"#!/bin/sh\nrm -f /{cfg.relative_to(root)}\n")
    hook.chmod(0o755)
    (root / "var/lib/cloud/instances").mkdir(parents=True, exist_ok=True)
    dest = root / "root/nf-scripts"
    shutil.copytree(trees["aws"] / "scripts", dest)
    try:
        r = chroot_run(
            root,
            "bash",
            "-c",
            "set -a; . /root/nf-scripts/provision.env; set +a; bash /root/nf-scripts/cleanup.sh",
        )
        assert r.returncode == 0, r.stderr
        assert cfg.exists() and "installed by subiquity" in r.stderr
    finally:
        shutil.rmtree(dest)
        hook.unlink()
        cfg.unlink(missing_ok=True)


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
    assert rel["NVIDIA_DRIVER_PACKAGE"] == '"nvidia-headless-no-dkms-580-server"'
    assert rel["NVIDIA_DRIVER_VERSION"] == '"580.173.02-0ubuntu0.24.04.1"'


def test_non_gpu_profile_skips_nvidia(cpu_root):
    root, r = cpu_root
    assert "not a GPU profile, nothing to do" in r["first"].stderr
    # one mirror URL for CRI-O and Kubernetes: one list, one keyring
    lists = sorted(p.name for p in (root / "etc/apt/sources.list.d").glob("nodeforge-*"))
    assert lists == ["nodeforge-crio.list"]
    assert (
        "is already configured in /etc/apt/sources.list.d/nodeforge-crio.list" in r["first"].stderr
    )
    assert not (root / "etc/apt/sources.list.d/nodeforge-nvidia.list").exists()
    assert not (root / "etc/crio/crio.conf.d/99-nodeforge-nvidia.conf").exists()
    assert dpkg_version(root, "nvidia-container-toolkit") == ""
    assert dpkg_version(root, "kubeadm") == "1.35.0-1.1"


def test_unavailable_pinned_version_fails_loudly(cpu_root, trees):
    root, _ = cpu_root
    dest = root / "tmp/nf-scripts"
    shutil.copytree(trees["aws"] / "scripts", dest)
    try:
        r = chroot_run(
            root,
            "bash",
            "-c",
            "set -a; . /tmp/nf-scripts/provision.env; NF_K8S_VERSION=1.35.7; "
            "bash /tmp/nf-scripts/install-kubernetes.sh",
        )
    finally:
        shutil.rmtree(dest)
    assert r.returncode != 0
    assert "profile wants 1.35.7-*" in r.stderr
