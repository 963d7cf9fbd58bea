"""The qcow2 package layer cache for real: packer 1.6 + QEMU (TCG), the STAND-IN base image
(tests/support/rootfs.py) and the STAND-IN apt repository (tests/support/standins.py) on
loopback, whose every request is counted.

1. a cold build installs the package set (packages fetched from the repository) and stores
   the layer; it is also THE real qemu ``packer build`` test: its artifact (manifest,
   SHA256SUMS, qcow2, no build key left) and what provisioning did inside the image;
2. a rebuild with another NTP server (same package set) asks the repository for nothing at
   all, and the image has the new setting and the same package set;
3. a corrupted layer is detected (sha256), dropped and rebuilt from the repository, never
   booted; the image is still right (its own test: one cold build, not three).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
from packer_site import render_standin_site, set_pkrvars

from builder.run import run, which
from builder.targets import layers, packer
from tests.support.rootfs import build_base_image
from tests.support.standins import build_standin_repo

pytestmark = pytest.mark.integration

for _tool in ("packer", "qemu-system-x86_64", "qemu-img", "mmdebstrap", "debugfs"):
    if not which(_tool):
        pytest.skip(f"{_tool} not installed (make deps)", allow_module_level=True)


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self):  # noqa: N802 - stdlib name
        self.requests.append(self.path)
        super().do_GET()

    def do_HEAD(self):  # noqa: N802 - stdlib name
        self.requests.append(self.path)
        super().do_HEAD()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = build_standin_repo(tmp_path_factory.mktemp("standin") / "repo")
    log: list[str] = []
    handler = type("Handler", (CountingHandler,), {"requests": log})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(repo.path))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], log
    server.shutdown()


def dpkg_status(raw: Path) -> dict[str, tuple[str, str]]:
    """package -> (status, version) from the image's /var/lib/dpkg/status (debugfs)."""
    text = run(["debugfs", "-R", "cat /var/lib/dpkg/status", raw]).stdout
    out = {}
    for para in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in para.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            out[fields["Package"]] = (fields.get("Status", ""), fields.get("Version", ""))
    return out


def build(tmp: Path, port: int, ntp: str, base) -> tuple[packer.PackerResult, Path]:
    url = f"http://10.0.2.2:{port}/"
    tree = render_standin_site(
        "aws",
        tmp / "build" / "aws",
        url,
        url + "Release.key",
        extra=["target=qcow2", f"time_sync.servers=[{ntp}]"],
    )
    set_pkrvars(
        tree, ssh_username="nodeforge-build", qemu_ssh_timeout="8m", qemu_memory_mb=1024,
        disk_size_gb=4,
    )  # fmt: skip
    result = packer.build_packer_image(
        tree,
        "qcow2",
        base_image=base.qcow2,
        qemu_args=[*base.qemu_args(), ["-serial", f"file:{tmp / 'serial.log'}"]],
        timeout=900,
    )
    assert isinstance(result, packer.PackerResult)
    manifest = json.loads((tmp / "dist" / "aws" / "manifest.json").read_text())
    [art] = manifest["artifacts"]
    image = tmp / "dist" / "aws" / art["name"]
    raw = tmp / "out.raw"
    run(["qemu-img", "convert", "-O", "raw", image, raw])
    return result, raw


def cat(raw: Path, path: str) -> str:
    return run(["debugfs", "-R", f"cat {path}", raw]).stdout


def check_image(raw: Path, ntp: str) -> dict[str, tuple[str, str]]:
    status = dpkg_status(raw)
    for pkg in ("kubeadm", "kubelet", "kubectl", "cri-o"):
        assert status[pkg] == ("hold ok installed", "1.35.0-1.1"), pkg
    assert status["wireguard-tools"][0] == "install ok installed"
    release = cat(raw, "/etc/nodeforge-release")
    assert 'SITE="aws"' in release and 'CRIO_VERSION="1.35.0-1.1"' in release
    assert ntp in cat(raw, "/etc/systemd/timesyncd.conf.d/10-nodeforge.conf")
    assert cat(raw, "/etc/machine-id") == ""
    assert "nodeforge" not in run(["debugfs", "-R", "ls -l /tmp", raw]).stdout
    assert "nodeforge-packer-build" not in cat(raw, "/home/nodeforge-build/.ssh/authorized_keys")
    # the site step ran on top of the layer: overlay and enrollment unit
    wants = run(["debugfs", "-R", "ls /etc/systemd/system/multi-user.target.wants", raw]).stdout
    for unit in ("nodeforge-enroll.service", "crio.service", "kubelet.service"):
        assert unit in wants
    return status


def check_artifact(tmp: Path, raw: Path) -> None:
    """A real `packer build` (qemu, TCG): boot, upload, provision, clean, shut down."""
    dist = tmp / "dist" / "aws"
    manifest = json.loads((dist / "manifest.json").read_text())
    [art] = manifest["artifacts"]
    image = dist / art["name"]
    assert art["type"] == "qcow2" and image.suffix == ".qcow2"
    assert art["sha256"] == run(["sha256sum", image]).stdout.split()[0]
    assert manifest["packer"]["builds"][0]["builder_type"] == "qemu"
    assert (dist / "SHA256SUMS").read_text() == f"{art['sha256']}  {art['name']}\n"
    assert not (dist / ".packer-run").exists()  # build key and seed gone
    info = json.loads(run(["qemu-img", "info", "--output=json", image]).stdout)
    assert info["format"] == "qcow2"
    release = cat(raw, "/etc/nodeforge-release")
    assert 'KUBERNETES_VERSION="1.35.0-1.1"' in release
    assert "signed-by=/etc/apt/keyrings/nodeforge-crio.gpg" in cat(
        raw, "/etc/apt/sources.list.d/nodeforge-crio.list"
    )
    # the overlay's CRI-O drop-in beside the package's own (one renderer per node file)
    crio_dir = run(["debugfs", "-R", "ls /etc/crio/crio.conf.d", raw]).stdout
    assert "10-crio.conf" in crio_dir and "20-nodeforge.conf" in crio_dir
    # applied at once over SSH (not a chroot): the modules file is there for the next boots
    assert "br_netfilter" in cat(raw, "/etc/modules-load.d/90-nodeforge.conf")
    assert not run(["debugfs", "-R", "ls /etc/ssh", raw]).stdout.count("ssh_host_")
    assert "nodeforge-build-" not in cat(raw, "/home/nodeforge-build/.ssh/authorized_keys")


def debs(log: list[str]) -> list[str]:
    return [p for p in log if p.endswith(".deb")]


@pytest.fixture
def layer_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILDER_QEMU_ACCEL", "tcg")
    root = tmp_path / "layers"
    monkeypatch.setenv("BUILDER_LAYER_CACHE_DIR", str(root))
    monkeypatch.delenv("BUILDER_PACKER_LAYERS", raising=False)
    return root


def test_layer_cold_then_hit_asks_the_repository_nothing(tmp_path, served, layer_env):
    port, log = served
    root = layer_env
    base = build_base_image()

    # 1. cold: the package set comes from the repository; the layer is stored with its record
    log.clear()
    result, raw = build(tmp_path / "b1", port, "ntp1.example.net", base)
    assert result.layer.reason == "missing" and not result.layer.hit
    assert any(p.endswith("/cri-o_1.35.0-1.1_amd64.deb") for p in log)
    assert len(debs(log)) >= 4
    first = check_image(raw, "ntp1.example.net")
    check_artifact(tmp_path / "b1", raw)
    [entry] = root.glob("*.qcow2")
    record = json.loads(entry.with_suffix(".json").read_text())
    assert record["sha256"] == run(["sha256sum", entry]).stdout.split()[0]
    assert not list(root.glob(".build-*")), "the layer's work dir is left behind"

    # 2. same package set, another NTP server: nothing asked of the repository at all
    log.clear()
    result, raw = build(tmp_path / "b2", port, "ntp2.example.net", base)
    assert result.layer.hit and result.layer.key == entry.stem
    assert log == []
    assert check_image(raw, "ntp2.example.net") == first


def test_a_corrupt_layer_is_detected_and_rebuilt_never_booted(tmp_path, served, layer_env):
    """The cached entry is the BASE image (no packages) with one byte flipped: were it
    booted, the image would lack every package; it is dropped and the layer rebuilt."""
    port, log = served
    root = layer_env
    base = build_base_image()
    url = f"http://10.0.2.2:{port}/"
    tree = render_standin_site(
        "aws", tmp_path / "key" / "aws", url, url + "Release.key",
        extra=["target=qcow2", "time_sync.servers=[ntp3.example.net]"],
    )  # fmt: skip
    set_pkrvars(
        tree, ssh_username="nodeforge-build", qemu_ssh_timeout="8m", qemu_memory_mb=1024,
        disk_size_gb=4,
    )  # fmt: skip
    pkrvars = packer.load_site_tree(tree)
    inputs = layers.layer_inputs(tree, pkrvars, run(["sha256sum", base.qcow2]).stdout.split()[0])
    key = layers.layer_key(inputs)
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(base.qcow2, copy)
    entry = layers.store(root, key, copy, inputs)
    with open(entry, "r+b") as fh:
        fh.seek(entry.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))

    log.clear()
    result, raw = build(tmp_path / "b3", port, "ntp3.example.net", base)
    assert result.layer.key == key
    assert result.layer.reason.startswith("corrupt: sha256") and not result.layer.hit
    assert len(debs(log)) >= 4
    check_image(raw, "ntp3.example.net")
    record = json.loads(entry.with_suffix(".json").read_text())
    assert record["sha256"] == run(["sha256sum", entry]).stdout.split()[0]


def test_layer_key_sees_the_package_set_only(tmp_path, served):
    """Which inputs make another layer (no build: the key of two rendered trees)."""
    port, _ = served
    url = f"http://10.0.2.2:{port}/"

    def key(name: str, *sets: str) -> str:
        tree = render_standin_site(
            "aws", tmp_path / name / "aws", url, url + "Release.key", extra=list(sets)
        )
        pkrvars = packer.load_site_tree(tree)
        return layers.layer_key(layers.layer_inputs(tree, pkrvars, "0" * 64))

    same = key("a", "time_sync.servers=[a.example.net]")
    assert key("b", "time_sync.servers=[b.example.net]", "swap.enabled=true") == same
    assert key("c", "kubernetes.version=1.35.1") != same
