"""The control plane's kubeadm configuration (builder/hub/kubeadm.py).

Structure is checked against the upstream v1beta4 types transcribed in
tests/support/kubeadm_v1beta4.py (an independent source: kubernetes/kubernetes types.go),
which rejects unknown fields and wrong types like ``kubeadm config validate`` does.
"""

from __future__ import annotations

import copy
import json
import stat

import pytest
import yaml

from builder.errors import UsageError, ValidationError
from builder.hub import kubeadm
from builder.site.profile import load_profile
from tests.support import kubeadm_v1beta4 as v1beta4

CP = kubeadm.ControlPlane(
    kubernetes_version="1.35.0",
    hub_ip="10.200.0.1",
    overlay_cidr="10.200.0.0/16",
    pod_cidr="10.244.0.0/16",
    service_cidr="10.96.0.0/12",
    public_names=("hub.example.com",),
)


def _docs(cp: kubeadm.ControlPlane = CP) -> list[dict]:
    return list(yaml.safe_load_all(kubeadm.render(cp)))


def test_rendered_yaml_is_valid_v1beta4_and_puts_the_control_plane_in_the_overlay():
    docs = _docs()
    assert [d["kind"] for d in docs] == ["InitConfiguration", "ClusterConfiguration"]
    for d in docs:
        assert v1beta4.validate_document(d) == [], d
    init, cluster = docs
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.200.0.1", "bindPort": 6443}
    reg = init["nodeRegistration"]
    assert reg["criSocket"] == "unix:///var/run/crio/crio.sock"
    assert {"name": "node-ip", "value": "10.200.0.1"} in reg["kubeletExtraArgs"]
    assert "taints" not in reg  # nil -> kubeadm's control-plane taint stays
    assert cluster["controlPlaneEndpoint"] == "10.200.0.1:6443"
    assert cluster["apiServer"]["certSANs"] == ["10.200.0.1", "hub.example.com"]
    assert cluster["networking"] == {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12"}
    assert cluster["kubernetesVersion"] == "v1.35.0"


def test_the_validator_rejects_unknown_fields_and_wrong_types():
    """The check can fail: the v1beta3 spellings and a stray key are caught."""
    init, cluster = _docs()
    bad = copy.deepcopy(init)
    bad["nodeRegistration"]["kubeletExtraArgs"] = {"node-ip": "10.200.0.1"}  # v1beta3 map
    assert any("must be a list" in p for p in v1beta4.validate_document(bad))
    bad = copy.deepcopy(cluster)
    bad["apiServer"]["timeoutForControlPlane"] = "4m0s"  # gone in v1beta4
    assert v1beta4.validate_document(bad) == [
        "apiServer: unknown field 'timeoutForControlPlane' in APIServer"
    ]
    bad = copy.deepcopy(cluster)
    bad["controlPlaneEndpoint"] = 6443
    assert v1beta4.validate_document(bad) == ["controlPlaneEndpoint: must be a string"]
    bad = copy.deepcopy(init)
    bad["localAPIEndpoint"]["advertiseAdress"] = "10.200.0.1"  # typo
    assert "unknown field 'advertiseAdress'" in v1beta4.validate_document(bad)[0]
    bad = dict(init, apiVersion="kubeadm.k8s.io/v1beta3")
    assert v1beta4.validate_document(bad)


@pytest.mark.parametrize("version", ["1.31.0", "1.35.2", "v1.36.1"])
def test_api_version_is_v1beta4_from_1_31(version):
    assert kubeadm.api_version_for(version) == "kubeadm.k8s.io/v1beta4"


@pytest.mark.parametrize("version", ["1.30.9", "1.35", "latest", "2.0.0"])
def test_older_or_malformed_versions_are_refused(version):
    with pytest.raises(UsageError):
        kubeadm.api_version_for(version)


def test_inconsistent_inputs_are_all_reported_at_once():
    cp = kubeadm.ControlPlane(
        kubernetes_version="1.35.0",
        hub_ip="10.201.0.1",
        overlay_cidr="10.200.0.0/16",
        pod_cidr="10.200.128.0/17",
        service_cidr="10.96.0.0/12",
        mtu=1300,
    )
    with pytest.raises(ValidationError) as exc:
        kubeadm.documents(cp)
    text = str(exc.value)
    assert "hub_overlay_ip: 10.201.0.1 is not inside 10.200.0.0/16" in text
    assert "overlay_cidr: 10.200.0.0/16 overlaps kubernetes.pod_cidr" in text
    assert "wireguard.mtu: 1300" in text


def test_cni_settings_carry_the_mtu_arithmetic():
    cni = kubeadm.cni_settings(CP)
    assert cni["pod_mtu"] == 1370 == 1420 - 50
    assert cni["flannel"]["args"] == ["--iface=wg0"]
    assert cni["flannel"]["net-conf.json"]["Network"] == "10.244.0.0/16"
    net = cni["calico"]["installation"]["calicoNetwork"]
    assert net["mtu"] == 1370
    assert net["nodeAddressAutodetectionV4"] == {"interface": "wg0"}
    assert net["ipPools"][0]["encapsulation"] == "VXLAN"


def test_write_config_is_atomic_0644_and_refuses_to_overwrite(tmp_path):
    path = kubeadm.write_config(tmp_path, CP)
    assert path.name == "kubeadm-init.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(UsageError, match="already exists"):
        kubeadm.write_config(tmp_path, CP)
    kubeadm.write_config(tmp_path, CP, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["kubeadm-init.yaml"]


def test_plan_has_the_steps_in_order_and_the_profile_snippet(tmp_path):
    p = kubeadm.plan(
        CP,
        hub_dir=tmp_path,
        config_path=tmp_path / "hub.json",
        kubeadm_config=tmp_path / "kubeadm-init.yaml",
        ca_cert=tmp_path / "ca.pem",
        ca_pin="sha256:" + "ab" * 32,
        hub_public_key="K" * 43 + "=",
    )
    json.dumps(p)  # --json must be plain data
    cmds = [c for s in p["steps"] for c in s["commands"]]
    order = [
        next(i for i, c in enumerate(cmds) if c.startswith(prefix))
        for prefix in ("builder hub serve", "sysctl -w net.ipv4.ip_forward=1", "kubeadm init")
    ]
    assert order == sorted(order)
    assert f"kubeadm init --config {tmp_path}/kubeadm-init.yaml" in cmds
    assert cmds[-1].startswith("builder hub doctor")
    assert p["profile_snippet"]["enrollment.ca_cert"] == f"file:{tmp_path}/ca.pem"
    assert p["profile_snippet"]["enrollment.ca_pin"].startswith("sha256:")
    assert p["profile_snippet"]["wireguard.hub_public_key"] == "K" * 43 + "="
    text = kubeadm.format_plan(p)
    assert "--iface=wg0" in text and "1370" in text
    snippet = yaml.safe_load(text.split("Profile snippet (paste into profiles/<site>.yaml):\n")[1])
    assert snippet["enrollment"]["ca_pin"] == p["profile_snippet"]["enrollment.ca_pin"]
    assert snippet["wireguard"]["hub_public_key"] == "K" * 43 + "="


def test_every_shipped_profile_gives_a_valid_config(workdir, shipped_sites):
    for site in shipped_sites:
        prof = load_profile(site, workdir / "profiles")
        cp = kubeadm.from_values(
            prof.get,
            hub_ip=prof.get("wireguard.hub_overlay_ip"),
            overlay_cidr=prof.get("wireguard.overlay_cidr"),
        )
        for d in yaml.safe_load_all(kubeadm.render(cp)):
            assert v1beta4.validate_document(d) == [], (site, d)
        cluster = list(yaml.safe_load_all(kubeadm.render(cp)))[1]
        endpoint_host = prof.get("wireguard.hub_endpoint").rsplit(":", 1)[0]
        assert endpoint_host in cluster["apiServer"]["certSANs"]
        assert cluster["apiServer"]["certSANs"][0] == prof.get("wireguard.hub_overlay_ip")


def test_prepare_after_init_hub_writes_the_config_beside_hub_json(tmp_path):
    from builder.hub.pki import init_hub

    res = init_hub(
        tmp_path,
        endpoint="hub.example.com:51820",
        url="https://enroll.example.com:8443",
        overlay_cidr="10.200.0.0/16",
        hub_ip=None,
        listen="",
        extra_names=[],
    )
    p = kubeadm.prepare(tmp_path, CP, res)
    assert (tmp_path / "kubeadm-init.yaml").is_file()
    assert p["profile_snippet"]["enrollment.ca_pin"] == res["ca_pin"]
    assert p["profile_snippet"]["wireguard.hub_public_key"] == res["hub_public_key"]
    assert p["profile_snippet"]["enrollment.ca_cert"] == f"file:{tmp_path}/ca.pem"
    assert f"builder hub serve --config {tmp_path}/hub.json" in p["steps"][0]["commands"]
