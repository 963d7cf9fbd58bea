"""dist/<site>/manifest.json and SHA256SUMS: one schema for every target (builder/dist.py).

Expected documents are written out here as literals, not computed by the code under test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from builder import dist
from builder.errors import BuilderError
from builder.flash import flasher
from builder.targets import packer

SHA_A = "a" * 64
SHA_B = "b" * 64

# what builder.site.render writes as build/<site>/manifest.json (the fields dist reads)
TREE = {
    "tool": "nodeforge",
    "site": "onprem",
    "builder_version": "0.1.0",
    "builder_commit": "0123456789ab",
    "source_date_epoch": 1767225600,
    "profile_hash": "p" * 64,
    "input_hash": "r" * 64,
    "layers": ["builder defaults", "profiles/base.yaml", "profiles/onprem.yaml"],
    "target": "iso",
    "image_name": "onprem-ubuntu24.04-k8s1.35.0",
    "versions": {"ubuntu": "24.04", "kubernetes": "1.35.0", "cri-o": "1.35"},
    "files": {"cloud-init/user-data": SHA_B},
}

ISO_MANIFEST = """{
  "artifacts": [
    {
      "name": "onprem-ubuntu24.04-k8s1.35.0.iso",
      "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "size": 4096,
      "type": "iso"
    }
  ],
  "builder_commit": "0123456789ab",
  "builder_version": "0.1.0",
  "cache_key": "k",
  "image_name": "onprem-ubuntu24.04-k8s1.35.0",
  "profile_hash": "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp",
  "render_input_hash": "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr",
  "schema": 1,
  "site": "onprem",
  "source_date_epoch": 1767225600,
  "target": "iso",
  "tool": "nodeforge",
  "versions": {
    "cri-o": "1.35",
    "kubernetes": "1.35.0",
    "ubuntu": "24.04"
  }
}
"""


def test_iso_manifest_and_sums_are_exactly_the_schema(tmp_path: Path) -> None:
    doc = dist.manifest(
        TREE,
        "iso",
        [
            {
                "type": "iso",
                "name": "onprem-ubuntu24.04-k8s1.35.0.iso",
                "sha256": SHA_A,
                "size": 4096,
            }
        ],
        details={"cache_key": "k"},
    )
    path = dist.write(tmp_path, doc)
    assert path == tmp_path / "manifest.json"
    assert path.read_text() == ISO_MANIFEST
    assert (tmp_path / "SHA256SUMS").read_text() == (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "  onprem-ubuntu24.04-k8s1.35.0.iso\n"
    )
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_artifacts_sorted_and_sums_list_files_only(tmp_path: Path) -> None:
    arts = [
        {"type": "qcow2", "name": "z.qcow2", "sha256": SHA_B, "size": 2},
        {"type": "ami", "region": "us-east-1", "ami_id": "ami-2"},
        {"type": "qcow2", "name": "a.qcow2", "sha256": SHA_A, "size": 1},
        {"type": "ami", "region": "eu-central-1", "ami_id": "ami-1"},
    ]
    doc = dist.manifest(TREE, "qcow2", arts)
    assert [(a["type"], a.get("region"), a.get("name")) for a in doc["artifacts"]] == [
        ("ami", "eu-central-1", None),
        ("ami", "us-east-1", None),
        ("qcow2", None, "a.qcow2"),
        ("qcow2", None, "z.qcow2"),
    ]
    assert dist.sums_text(doc) == f"{SHA_A}  a.qcow2\n{SHA_B}  z.qcow2\n"
    # same inputs, later: byte-identical (no wall clock anywhere)
    first = dist.write(tmp_path / "one", doc).read_bytes()
    time.sleep(1.1)
    again = dist.write(tmp_path / "two", dist.manifest(TREE, "qcow2", reversed(arts)))
    assert again.read_bytes() == first


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match="plain file name"):
        dist.manifest(TREE, "iso", [{"type": "iso", "name": "../x.iso", "sha256": SHA_A}])
    with pytest.raises(BuilderError, match="would replace a header field"):
        dist.manifest(TREE, "iso", [], details={"site": "other"})
    with pytest.raises(BuilderError, match="lacks versions"):
        dist.manifest({k: v for k, v in TREE.items() if k != "versions"}, "iso", [])
    with pytest.raises(BuilderError, match="not a rendered build tree"):
        dist.tree_record(tmp_path)


def test_reader_knows_only_this_schema(tmp_path: Path) -> None:
    iso = tmp_path / "onprem-ubuntu24.04-k8s1.35.0.iso"
    iso.write_bytes(b"\0" * 4096)
    (tmp_path / "manifest.json").write_text(ISO_MANIFEST)
    assert dist.read(tmp_path) == json.loads(ISO_MANIFEST)
    assert dist.artifact_path(tmp_path, "iso") == iso
    assert dist.artifact_path(tmp_path, "qcow2") is None
    legacy = {"target": "iso", "artifacts": [{"name": iso.name, "sha256": SHA_A}]}
    (tmp_path / "manifest.json").write_text(json.dumps(legacy))
    assert dist.read(tmp_path) is None
    assert dist.artifact_path(tmp_path, "iso") is None
    (tmp_path / "manifest.json").write_text("{not json")
    assert dist.read(tmp_path) is None


def test_flash_reads_the_manifest_through_dist(tmp_path: Path) -> None:
    site = tmp_path / "dist" / "onprem"
    site.mkdir(parents=True)
    built = site / "onprem-ubuntu24.04-k8s1.35.0.iso"
    built.write_bytes(b"\0" * 4096)
    newer = site / "seed.iso"
    newer.write_bytes(b"\1" * 4096)
    os.utime(built, (time.time() - 100, time.time() - 100))
    (site / "manifest.json").write_text(ISO_MANIFEST)
    assert flasher.resolve_image(None, "onprem", tmp_path / "dist") == built


def test_packer_manifest_is_the_same_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "build" / "aws"
    for sub in ("packer", "scripts", "files"):
        (tree / sub).mkdir(parents=True)
    (tree / "scripts/provision.sh").write_text("#!/bin/bash\n")
    (tree / "scripts/provision.env").write_text("NF_SITE=aws\n")
    (tree / packer.PKRVARS).write_text(json.dumps({"site": "aws", "image_name": "aws-img"}))
    aws_tree = {**TREE, "site": "aws", "target": "ami", "image_name": "aws-img"}
    (tree / "manifest.json").write_text(json.dumps(aws_tree))
    plan = packer.plan_packer(tree, "ami", dist_dir=tmp_path / "dist")
    monkeypatch.setattr(packer, "packer_version", lambda: (1, 6, 6))
    builds = [
        {
            "name": "node",
            "builder_type": "amazon-ebs",
            "artifact_id": "us-east-1:ami-2,eu-central-1:ami-1",
            "custom_data": None,
            "packer_run_uuid": "u",
        }
    ]
    arts = packer.artifacts_from_build(builds[0])
    path = packer.write_dist_manifest(plan, arts, builds)
    doc = json.loads(path.read_text())
    assert doc["schema"] == 1 and doc["target"] == "ami" and doc["site"] == "aws"
    assert doc["versions"] == {
        "ubuntu": "24.04",
        "kubernetes": "1.35.0",
        "cri-o": "1.35",
        "packer": "1.6.6",
    }
    assert doc["artifacts"] == [
        {"type": "ami", "region": "eu-central-1", "ami_id": "ami-1"},
        {"type": "ami", "region": "us-east-1", "ami_id": "ami-2"},
    ]
    assert doc["source_date_epoch"] == 1767225600
    assert "built_at" not in doc and "crio" not in doc["versions"]
    assert doc["packer"]["builds"] == [
        {
            "name": "node",
            "builder_type": "amazon-ebs",
            "artifact_id": "us-east-1:ami-2,eu-central-1:ami-1",
            "custom_data": None,
        }
    ]
    assert (tmp_path / "dist" / "SHA256SUMS").read_text() == ""  # an AMI is no file here
