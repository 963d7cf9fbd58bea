"""Packer for real: `packer validate`/`fmt -check` for every shipped profile, a real qemu
`packer build` (TCG) from the STAND-IN base image, and the AMI dry run.

Stand-ins (named as such): the base qcow2 is Debian bookworm made by builder/rootfs.py
(Ubuntu's cloud image is unreachable here) booted by direct kernel boot; the Kubernetes,
CRI-O and NVIDIA repositories are the stand-in repo of builder/standins.py, served over HTTP
on the host's loopback and reached by the guest through QEMU user networking (10.0.2.2).
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
from packer_site import render_standin_site, set_pkrvars, shipped_sites

from builder.errors import BuilderError
from builder.fsutil import sha256_file
from builder.run import run, which
from builder.targets import packer
from tests.support.rootfs import build_base_image
from tests.support.standins import build_standin_repo, register

pytestmark = pytest.mark.integration

if not which("packer"):
    pytest.skip("packer not installed (make deps)", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_standin_repo(tmp_path_factory.mktemp("standin") / "repo")


@pytest.fixture(scope="module")
def http_repo(repo):
    """Serve the stand-in repo on 127.0.0.1 (the guest sees the host's loopback as 10.0.2.2)."""
    handler = functools.partial(QuietHandler, directory=str(repo.path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


def test_fmt_check_on_shipped_templates():
    r = run(["packer", "fmt", "-check", "-diff", REPO_ROOT / "packer"], check=False)
    assert r.returncode == 0, r.stdout
    r = run(["packer", "fmt", "-check", REPO_ROOT / "packer/plugins"], check=False)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("site", shipped_sites())
@pytest.mark.parametrize("target", ["ami", "qcow2"])
def test_validate_every_shipped_profile(site, target, tmp_path):
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    tree = tmp_path / "build" / site
    render_site(load_profile(site, REPO_ROOT / "profiles"), tree)
    extra = {}
    if target == "qcow2":  # offline: a local file instead of downloading Ubuntu's image
        base = tmp_path / "base.img"
        base.write_bytes(b"stand-in")
        extra = {"qemu_base_image_url": str(base), "qemu_base_image_checksum": "none"}
    plan = packer.validate_packer(tree, target, extra_vars=extra)
    # the build's source names as the template declares them (source "<type>" "<name>"),
    # not as the code under test spells them
    only = {"ami": "amazon-ebs.node", "qcow2": "qemu.node"}[target]
    kind, name = only.split(".")
    assert f'source "{kind}" "{name}" {{' in (REPO_ROOT / "packer/nodeforge.pkr.hcl").read_text()
    assert f"-only={only}" in [str(a) for a in plan.argv]


def test_validate_rejects_bad_vars(tmp_path):
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    tree = tmp_path / "build" / "aws"
    render_site(load_profile("aws", REPO_ROOT / "profiles"), tree)
    set_pkrvars(tree, aws_volume_size_gb="lots")
    with pytest.raises(BuilderError, match="packer validate failed for aws"):
        packer.validate_packer(tree, "ami")


def test_ami_dry_run_shows_the_exact_command(tmp_path):
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    tree = tmp_path / "build" / "aws"
    render_site(load_profile("aws", REPO_ROOT / "profiles"), tree)
    plan = packer.build_packer_image(tree, "ami", dry_run=True)
    cmd = plan.command()
    assert cmd.startswith("packer build -color=false -on-error=cleanup -only=amazon-ebs.node ")
    assert f"-var-file={tree.resolve()}/packer/site.auto.pkrvars.json" in cmd
    assert not (tmp_path / "dist").exists()


def test_real_qemu_build_from_standin_base(tmp_path, http_repo, monkeypatch):
    """A real `packer build` (qemu, TCG): boot, upload, provision, clean, shut down."""
    for tool in ("qemu-system-x86_64", "qemu-img", "xorriso", "mmdebstrap"):
        if not which(tool):
            pytest.skip(f"{tool} not installed (make deps)")
    monkeypatch.setenv("BUILDER_QEMU_ACCEL", "tcg")
    base = build_base_image()
    url = f"http://10.0.2.2:{http_repo}/"
    tree = render_standin_site(
        "aws", tmp_path / "build" / "aws", url, url + "Release.key", extra=["target=qcow2"]
    )
    set_pkrvars(
        tree,
        ssh_username="nodeforge-build",
        qemu_ssh_timeout="8m",
        qemu_memory_mb=1024,
        disk_size_gb=4,
    )
    serial = tmp_path / "serial.log"
    result = packer.build_packer_image(
        tree,
        "qcow2",
        base_image=base.qcow2,
        qemu_args=[*base.qemu_args(), ["-serial", f"file:{serial}"]],
        timeout=900,
    )
    assert isinstance(result, packer.PackerResult)
    dist = tmp_path / "dist" / "aws"
    manifest = json.loads((dist / "manifest.json").read_text())
    [art] = manifest["artifacts"]
    image = dist / art["name"]
    assert art["type"] == "qcow2" and image.suffix == ".qcow2"
    assert art["sha256"] == sha256_file(image)
    assert manifest["packer"]["builds"][0]["builder_type"] == "qemu"
    sums = (dist / "SHA256SUMS").read_text()
    assert sums == f"{art['sha256']}  {art['name']}\n"
    assert not (dist / ".packer-run").exists()  # build key and seed gone
    info = json.loads(run(["qemu-img", "info", "--output=json", image]).stdout)
    assert info["format"] == "qcow2"
    # what the provisioning did inside the image: read the ext4 filesystem with debugfs
    raw = tmp_path / "out.raw"
    run(["qemu-img", "convert", "-O", "raw", image, raw])

    def cat(path: str) -> str:
        return run(["debugfs", "-R", f"cat {path}", raw]).stdout

    release = cat("/etc/nodeforge-release")
    assert 'SITE="aws"' in release and 'KUBERNETES_VERSION="1.35.0-1.1"' in release
    assert cat("/etc/machine-id") == ""
    assert "signed-by=/etc/apt/keyrings/nodeforge-crio.gpg" in cat(
        "/etc/apt/sources.list.d/nodeforge-crio.list"
    )
    assert "nodeforge-build-" not in cat("/home/nodeforge-build/.ssh/authorized_keys")
    listing = run(["debugfs", "-R", "ls -l /tmp", raw]).stdout
    assert "nodeforge" not in listing
    status = cat("/var/lib/dpkg/status")
    for pkg in ("kubeadm", "kubelet", "kubectl", "cri-o"):
        assert f"Package: {pkg}\nStatus: hold ok installed" in status
    # not in the (stand-in) base image: installed by provisioning, as on every target
    assert "Package: wireguard-tools\nStatus: install ok installed" in status
    # the overlay's CRI-O drop-in beside the package's own (one renderer per node file)
    crio_dir = run(["debugfs", "-R", "ls /etc/crio/crio.conf.d", raw]).stdout
    assert "10-crio.conf" in crio_dir and "20-nodeforge.conf" in crio_dir
    wants = run(["debugfs", "-R", "ls /etc/systemd/system/multi-user.target.wants", raw]).stdout
    for unit in ("nodeforge-enroll.service", "crio.service", "kubelet.service"):
        assert unit in wants
    # applied at once over SSH (not a chroot): the modules file is there for the next boots
    assert "br_netfilter" in cat("/etc/modules-load.d/90-nodeforge.conf")
    assert not run(["debugfs", "-R", "ls /etc/ssh", raw]).stdout.count("ssh_host_")


@pytest.mark.parametrize(
    ("kms", "ok"), [("", False), ("alias/nodeforge-ami", True)], ids=["default-key", "cmk"]
)
def test_real_packer_refuses_sharing_an_ami_encrypted_with_the_default_key(tmp_path, kms, ok):
    """The constraint behind the profile check `aws.ami_users` needs `aws.kms_key_id`
    (UPSTREAM.md, Packer), from packer itself; and the key reaches the template."""
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    tree = tmp_path / "build" / "aws"
    render_site(load_profile("aws", REPO_ROOT / "profiles"), tree)
    set_pkrvars(tree, aws_ami_users=["123456789012"], aws_kms_key_id=kms)
    if ok:
        packer.validate_packer(tree, "ami")
        return
    with pytest.raises(BuilderError) as exc:
        packer.validate_packer(tree, "ami")
    msg = f"{exc.value.message} {exc.value.hint}"
    assert register()["packer_amazon"]["share_default_key_error"] in msg
