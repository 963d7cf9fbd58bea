"""The typed profile (builder/site/model.py): one frozen dataclass per schema section."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from builder.paths import SCHEMA_DIR
from builder.site import model
from builder.site.profile import load_profile

SCHEMA = json.loads((SCHEMA_DIR / "profile.schema.json").read_text())


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_schema_key_has_a_typed_field() -> None:
    top = set(SCHEMA["properties"]) - {"extends"}
    assert _fields(model.SiteSpec) == top
    hints = {f.name: f.type for f in dataclasses.fields(model.SiteSpec)}
    for section, spec in SCHEMA["properties"].items():
        if spec.get("type") != "object" or section == "extends":
            continue
        cls = getattr(model, hints[section])
        assert _fields(cls) == set(spec["properties"]), section
    nvidia = SCHEMA["properties"]["gpu"]["properties"]["nvidia"]["properties"]
    assert _fields(model.NvidiaSection) == set(nvidia)
    static = SCHEMA["properties"]["network"]["properties"]["static"]["anyOf"][1]["properties"]
    assert _fields(model.StaticNetwork) == set(static)
    base = SCHEMA["properties"]["iso"]["properties"]["base"]["properties"]
    assert _fields(model.BaseImage) == set(base)


def test_spec_of_the_shipped_onprem_profile(workdir: Path) -> None:
    spec = load_profile("onprem").spec
    # values from profiles/base.yaml and profiles/onprem.yaml, read by eye
    assert spec.target == "iso"
    assert spec.kubernetes.version == "1.35.0"
    assert spec.kubernetes.pod_cidr == "10.244.0.0/16"
    assert spec.kubernetes.labels["topology.kubernetes.io/zone"] == "onprem-dc1"
    assert spec.crio.version == "1.35"
    assert spec.wireguard.overlay_cidr == "10.200.0.0/16"
    assert spec.wireguard.listen_port == 51820
    assert spec.enrollment.ca_cert == "file:demo-hub-ca.pem"
    assert spec.enrollment.site_token is None
    assert spec.gpu.enabled is True
    assert spec.gpu.nvidia.driver_branch == "580"
    assert spec.time_sync.servers == ("ntp.ubuntu.com",)
    assert spec.network.static is None
    assert spec.aws.region is None


def test_optional_keys_and_overrides(workdir: Path) -> None:
    spec = load_profile(
        "aws",
        overrides=[
            "network.static={address: 10.1.0.5/24, gateway: 10.1.0.1}",
            "kubernetes.taints=[{key: gpu, effect: NoSchedule},"
            " {key: a, value: b, effect: NoExecute}]",
            "admin.password=env:PW",
        ],
    ).spec
    assert spec.network.static == model.StaticNetwork("10.1.0.5/24", "10.1.0.1", None, None)
    assert spec.network.static.template_data() == {"address": "10.1.0.5/24", "gateway": "10.1.0.1"}
    assert spec.kubernetes.taints == (
        model.Taint("gpu", None, "NoSchedule"),
        model.Taint("a", "b", "NoExecute"),
    )
    assert spec.admin.password == "env:PW"  # the reference, never the secret


def test_spec_is_frozen(workdir: Path) -> None:
    spec = load_profile("aws").spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kubernetes.version = "1.36.0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.kubernetes.labels["x"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        spec.kernel.modules.append("x")  # type: ignore[attr-defined]


def test_a_section_replaced_then_partly_set_keeps_its_defaults(workdir: Path) -> None:
    """A layer that nulls a section and a later one that sets part of it: the schema
    accepts the result, and the typed view still has the builder defaults."""
    (workdir / "profiles/nogpu.yaml").write_text("extends: aws\ngpu: null\n")
    (workdir / "profiles/gpusite.yaml").write_text("extends: nogpu\ngpu: {enabled: true}\n")
    spec = load_profile("gpusite").spec
    assert spec.gpu.enabled is True
    assert spec.gpu.nvidia.driver_branch == "580"  # builder/site/defaults.yaml
    assert spec.gpu.nvidia.variant == "server"
