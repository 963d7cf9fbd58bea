"""builder/packer.py without running Packer: plans, manifests, preflight, template staging."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hcl2
import pytest

from builder.errors import BuilderError, UsageError
from builder.targets import packer

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "packer"


def site_tree(tmp: Path, site: str = "aws", **vars_: object) -> Path:
    tree = tmp / "build" / site
    (tree / "scripts").mkdir(parents=True)
    (tree / "files").mkdir()
    (tree / "packer").mkdir()
    (tree / "scripts/provision.sh").write_text("#!/bin/bash\n")
    (tree / "scripts/provision.env").write_text("NF_SITE=aws\n")
    data = {
        "site": site,
        "image_name": "aws-img",
        "profile_hash": "ab" * 32,
        "build_time": "1700000000",
        "kubernetes_version": "1.35.0",
        "crio_version": "1.35",
        "aws_region": "eu-central-1",
        **vars_,
    }
    (tree / packer.PKRVARS).write_text(json.dumps(data))
    return tree


def test_ami_dry_run_plan_is_exact_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(packer, "which", lambda tool: None)  # unit lane: no packer
    tree = site_tree(tmp_path)
    plan = packer.build_packer_image(tree, "ami", dry_run=True)
    assert isinstance(plan, packer.PackerPlan)
    argv = plan.argv
    assert argv[:4] == ["packer", "build", "-color=false", "-on-error=cleanup"]
    assert "-only=amazon-ebs.node" in argv
    assert f"-var-file={tree.resolve() / packer.PKRVARS}" in argv
    assert f"-var=build_dir={tree.resolve()}" in argv
    assert plan.dist_dir == (tmp_path / "dist" / "aws").resolve()
    assert not any("qemu" in a for a in argv)
    assert argv[-1] == str(packer.packer_dir())
    assert plan.command().startswith("packer build -color=false")
    assert not (tmp_path / "dist").exists()


def test_qcow2_plan_has_runtime_vars(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILDER_QEMU_ACCEL", "tcg")
    tree = site_tree(tmp_path, "lab")
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"x")
    plan = packer.plan_packer(
        tree, "qcow2", base_image=base, qemu_args=[["-kernel", "/k"], ["-append", "root=/dev/vda"]]
    )
    rv = plan.runtime_vars
    assert rv["qemu_accelerator"] == "tcg"
    assert rv["qemu_base_image_url"] == str(base.resolve())
    assert json.loads(rv["qemu_args"]) == [["-kernel", "/k"], ["-append", "root=/dev/vda"]]
    assert rv["qemu_ssh_private_key_file"].endswith("/.packer-run/seed/build_key")
    assert "-only=qemu.node" in plan.argv


def test_unknown_target_and_unrendered_tree_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown Packer target"):
        packer.plan_packer(site_tree(tmp_path), "iso")
    empty = tmp_path / "build" / "nope"
    empty.mkdir(parents=True)
    with pytest.raises(UsageError, match="not a rendered build tree") as exc:
        packer.plan_packer(empty, "ami")
    assert "builder render nope" in (exc.value.hint or "")


def test_bad_pkrvars_json_names_the_file(tmp_path):
    tree = site_tree(tmp_path)
    (tree / packer.PKRVARS).write_text("{nope")
    with pytest.raises(UsageError, match=re.escape(str(tree / packer.PKRVARS))):
        packer.plan_packer(tree, "ami")


def test_aws_credentials_detection(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert not packer.aws_credentials_present(home)
    assert packer.aws_credentials_present({**home, "AWS_PROFILE": "build"})
    assert packer.aws_credentials_present(
        {**home, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    )
    assert not packer.aws_credentials_present({**home, "AWS_ACCESS_KEY_ID": "a"})
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws/credentials").write_text("[default]\naws_access_key_id=x\n")
    assert packer.aws_credentials_present(home)


def test_preflight_errors_have_hints(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in (
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "BUILDER_AWS_INSTANCE_ROLE",
    ):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(BuilderError, match="IMDSv2") as exc:
        packer.preflight("ami", {}, (1, 6, 6))
    assert "packer init" in (exc.value.hint or "")
    with pytest.raises(BuilderError, match="no AWS credentials") as exc:
        packer.preflight("ami", {}, (1, 11, 0))
    assert "AWS_PROFILE" in (exc.value.hint or "")
    monkeypatch.setenv("AWS_PROFILE", "x")
    monkeypatch.setattr(packer, "_resolves", lambda host: False)
    with pytest.raises(BuilderError, match="no network to AWS"):
        packer.preflight("ami", {"aws_region": "eu-west-1"}, (1, 11, 0))
    with pytest.raises(BuilderError, match="cannot resolve cloud-images.ubuntu.com"):
        packer.preflight(
            "qcow2", {"qemu_base_image_url": "https://cloud-images.ubuntu.com/x.img"}, (1, 6, 6)
        )
    packer.preflight("qcow2", {"qemu_base_image_url": "/local/base.qcow2"}, (1, 6, 6))


def test_accelerator_env_override(monkeypatch):
    monkeypatch.setenv("BUILDER_QEMU_ACCEL", "tcg")
    assert packer.qemu_accelerator() == "tcg"


def test_manifest_parsing_ami_and_qemu(tmp_path):
    doc = {
        "builds": [
            {
                "name": "node",
                "builder_type": "amazon-ebs",
                "packer_run_uuid": "old",
                "artifact_id": "eu-central-1:ami-old",
            },
            {
                "name": "node",
                "builder_type": "amazon-ebs",
                "packer_run_uuid": "new",
                "artifact_id": "eu-central-1:ami-0123,eu-west-1:ami-0456",
                "files": None,
            },
            {
                "name": "node",
                "builder_type": "qemu",
                "packer_run_uuid": "new",
                "artifact_id": "VM",
                "files": [{"name": "out/x.qcow2", "size": 3}],
            },
        ],
        "last_run_uuid": "new",
    }
    p = tmp_path / "m.json"
    p.write_text(json.dumps(doc))
    builds = packer.read_packer_manifest(p)
    assert len(builds) == 2
    assert packer.artifacts_from_build(builds[0]) == [
        {"type": "ami", "region": "eu-central-1", "ami_id": "ami-0123"},
        {"type": "ami", "region": "eu-west-1", "ami_id": "ami-0456"},
    ]
    assert packer.artifacts_from_build(builds[1]) == [{"type": "file", "path": "out/x.qcow2"}]
    with pytest.raises(BuilderError, match="cannot read Packer's manifest"):
        packer.read_packer_manifest(tmp_path / "missing.json")


def test_strip_for_packer16_removes_only_metadata_options_and_imds_support():
    text = (TEMPLATES / "nodeforge.pkr.hcl").read_text()
    out = packer.strip_for_packer16(text)
    assert "metadata_options" in text and "metadata_options" not in out
    assert "imds_support" in text and "imds_support" not in out
    assert "http_tokens" not in out
    assert len(text.splitlines()) - len(out.splitlines()) <= 9
    assert out.count("{") == out.count("}")


def test_build_seed_has_key_and_locale(tmp_path):
    key = packer.write_build_seed(tmp_path / "seed", "ubuntu")
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    ud = (tmp_path / "seed/user-data").read_text()
    assert ud.startswith("#cloud-config\n") and "ssh-ed25519 " in ud and "locale: C.UTF-8" in ud
    assert "instance-id: nodeforge-build-" in (tmp_path / "seed/meta-data").read_text()


def _unquote(x):
    """python-hcl2 keeps the quotes of string literals and labels: drop them."""
    if isinstance(x, dict):
        return {_unquote(k): _unquote(v) for k, v in x.items() if k != "__is_block__"}
    if isinstance(x, list):
        return [_unquote(v) for v in x]
    if isinstance(x, str) and len(x) >= 2 and x[0] == x[-1] == '"':
        return x[1:-1]
    return x


def _parse(name: str) -> dict:
    with open(TEMPLATES / name) as fh:
        return _unquote(hcl2.load(fh))


def test_templates_amazon_source_requirements():
    doc = _parse("nodeforge.pkr.hcl")
    src = next(s["amazon-ebs"]["node"] for s in doc["source"] if "amazon-ebs" in s)
    flt = src["source_ami_filter"][0]
    assert flt["owners"] == ["${var.aws_source_ami_owner}"]
    variables = {k: v for d in _parse("variables.pkr.hcl")["variable"] for k, v in d.items()}
    assert variables["aws_source_ami_owner"]["default"] == "099720109477"
    bdm = src["launch_block_device_mappings"][0]
    assert bdm["volume_type"] == "gp3" and bdm["encrypted"] is True
    assert src["encrypt_boot"] is True
    assert src["metadata_options"][0]["http_tokens"] == "required"
    for key in ("ami_regions", "ami_users", "subnet_id", "ssh_interface", "tags"):
        assert key in src
    assert src["kms_key_id"] == "${var.aws_kms_key_id}"  # sharing needs it (UPSTREAM.md)
    assert variables["aws_kms_key_id"]["default"] == ""
    # kms_key_id covers the build region only: the copies take theirs from this map
    assert src["region_kms_key_ids"] == "${var.aws_region_kms_key_ids}"
    assert variables["aws_region_kms_key_ids"]["default"] == {}
    locals_ = doc["locals"][0]
    assert "nodeforge:profile-hash" in str(locals_["tags"])


def test_templates_build_runs_provision_and_writes_manifest():
    doc = _parse("nodeforge.pkr.hcl")
    build = doc["build"][0]
    assert build["sources"] == ["source.amazon-ebs.node", "source.qemu.node"]
    shells = [p["shell"] for p in build["provisioner"] if "shell" in p]
    assert any("provision.sh" in " ".join(s["inline"]) for s in shells)
    pp = build["post-processor"][0]["manifest"]
    assert pp["output"] == "${var.manifest_path}"
    qemu = next(s["qemu"]["node"] for s in doc["source"] if "qemu" in s)
    assert qemu["headless"] is True and qemu["cd_label"] == "cidata"
    assert qemu["accelerator"] == "${var.qemu_accelerator}"


def test_required_plugins_kept_apart():
    for f in TEMPLATES.glob("*.pkr.hcl"):
        assert "required_plugins" not in f.read_text(), f
    assert "required_plugins" in (TEMPLATES / "plugins/required.pkr.hcl").read_text()


def test_result_lines(tmp_path):
    plan = packer.plan_packer(site_tree(tmp_path), "ami")
    assert packer.result_lines(plan) == [plan.command()]
    res = packer.PackerResult(
        plan,
        tmp_path / "manifest.json",
        [
            {"type": "ami", "region": "eu-central-1", "ami_id": "ami-1"},
            {"type": "qcow2", "name": "x.qcow2", "size": 1, "sha256": "0"},
        ],
    )
    assert packer.result_lines(res) == [
        "eu-central-1 ami-1",
        str(plan.dist_dir / "x.qcow2"),
        str(tmp_path / "manifest.json"),
    ]


def test_standin_decoy_versions():
    from tests.support import standins

    assert standins._bump_patch("1.35.0-1.1") == "1.35.1-1.1"
    assert standins._bump_minor("1.35.0-1.1") == "1.36.0-1.1"
    assert standins._bump_minor("1.18.0-1") == "1.19.0-1"
    with pytest.raises(ValueError, match="unknown stand-in version keys"):
        standins.build_standin_repo("/nonexistent", kubelet="1")


def test_rootfs_cache_dir_and_direct_boot_args(monkeypatch, tmp_path):
    from tests.support import rootfs

    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path))
    assert rootfs.cache_dir() == tmp_path
    monkeypatch.delenv("BUILDER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rootfs.cache_dir() == tmp_path / "xdg" / "nodeforge"
    img = rootfs.BaseImage(tmp_path / "b.qcow2", tmp_path / "k", tmp_path / "i")
    args = img.qemu_args()
    assert args[0] == ["-kernel", str(tmp_path / "k")]
    assert args[2][0] == "-append" and "root=/dev/vda" in args[2][1]
    for pkg in (
        "linux-image-cloud-amd64",
        "systemd-sysv",
        "cloud-init",
        "python3",
        "openssh-server",
        "iproute2",
        "curl",
        "gnupg",
        "ca-certificates",
    ):
        assert pkg in rootfs.PACKAGES
