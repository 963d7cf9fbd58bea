"""Packer for real: `packer validate`/`fmt -check` for every shipped profile and the AMI dry
run. The real qemu `packer build` (TCG) from the STAND-IN base image is the cold build of
test_packer_layers.py (one build checked for everything: its artifact here, its layer there).

Stand-ins (named as such): the base qcow2 is Debian bookworm made by builder/rootfs.py
(Ubuntu's cloud image is unreachable here) booted by direct kernel boot; the Kubernetes,
CRI-O and NVIDIA repositories are the stand-in repo of builder/standins.py, served over HTTP
on the host's loopback and reached by the guest through QEMU user networking (10.0.2.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packer_site import set_pkrvars, shipped_sites

from builder.errors import BuilderError
from builder.run import run, which
from builder.targets import packer
from tests.support.standins import register

pytestmark = pytest.mark.integration

if not which("packer"):
    pytest.skip("packer not installed (make deps)", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(
    ("keys", "refusal"),
    [
        ({"us-west-2": "alias/nodeforge-ami", "us-east-1": "alias/nodeforge-ami"}, None),
        ({"us-west-2": "alias/nodeforge-ami"},
         "Region us-east-1 is in ami_regions but not in region_kms_key_ids"),
        ({"us-west-2": "alias/a", "us-east-1": "alias/a", "ap-south-1": "alias/a"},
         "Region ap-south-1 is in region_kms_key_ids but not in ami_regions"),
        ({"us-west-2": "alias/a", "us-east-1": ""},
         "Cannot share AMI encrypted with default KMS key for other regions"),
    ],
    ids=["a-key-per-copy", "a-copy-without-key", "a-key-without-copy", "a-shared-default-key"],
)  # fmt: skip
def test_real_packer_wants_a_key_for_each_copied_region(tmp_path, keys, refusal):
    """The rules behind the profile check on aws.region_kms_key_ids, from packer itself
    (Packer's amazon builder, ami_config.go: UPSTREAM.md); the map reaches the template, and
    the profile check refuses what packer refuses (before any build)."""
    from builder.errors import ValidationError
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    tree = tmp_path / "build" / "aws"
    render_site(load_profile("aws", REPO_ROOT / "profiles"), tree)
    set_pkrvars(
        tree, aws_ami_users=["123456789012"], aws_kms_key_id="alias/nodeforge-ami",
        aws_ami_regions=["us-west-2", "us-east-1"], aws_region_kms_key_ids=keys,
    )  # fmt: skip
    overrides = [
        "aws.ami_users=['123456789012']", "aws.kms_key_id=alias/nodeforge-ami",
        "aws.ami_regions=[us-west-2, us-east-1]",
        "aws.region_kms_key_ids={" + ", ".join(f"{r}: '{k}'" for r, k in keys.items()) + "}",
    ]  # fmt: skip
    if refusal is None:
        packer.validate_packer(tree, "ami")
        load_profile("aws", REPO_ROOT / "profiles", overrides)
        return
    with pytest.raises(BuilderError) as exc:
        packer.validate_packer(tree, "ami")
    assert refusal in f"{exc.value.message} {exc.value.hint}"
    with pytest.raises(ValidationError):
        load_profile("aws", REPO_ROOT / "profiles", overrides)
