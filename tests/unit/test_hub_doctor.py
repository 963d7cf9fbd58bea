"""Pure parts of `hub doctor` (the checks themselves run in tests/integration, in a netns)."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml

from builder.hub import config as hub_config
from builder.hub import doctor
from builder.hub.pki import init_hub


def test_target_comes_from_the_hub_config_builder_hub_init_writes(tmp_path):
    init_hub(
        tmp_path,
        endpoint="hub.example.com:51820",
        url="https://hub.example.com:8443",
        overlay_cidr="10.200.0.0/16",
        hub_ip=None,
        listen="",
        extra_names=[],
    )
    t = doctor.Target.from_hub_config(hub_config.load(tmp_path / "hub.json"))
    assert t.interface == "wg0"
    assert t.hub_ip == ipaddress.IPv4Address("10.200.0.1")
    assert t.network == ipaddress.IPv4Network("10.200.0.0/16")
    assert (t.mtu, t.api_port) == (1420, 6443)
    assert t.join["provider"] == "kubeadm"
    assert t.config_path == str(tmp_path / "hub.json")


def test_format_and_exit_code():
    checks = [
        doctor.Check("forwarding", True, "net.ipv4.ip_forward = 1"),
        doctor.Check("route", False, "not routed", "ip route replace 10.200.0.0/16 dev wg0"),
    ]
    text = doctor.format_checks(checks)
    assert text.splitlines() == [
        "ok   forwarding: net.ipv4.ip_forward = 1",
        "FAIL route: not routed",
        "     fix: ip route replace 10.200.0.0/16 dev wg0",
        "1 check(s) failed",
    ]
    assert doctor.exit_code(checks) == 1
    assert doctor.exit_code(checks[:1]) == 0
    assert doctor.format_checks(checks[:1]).endswith("ready for nodes\n")
    json.dumps([c.as_dict() for c in checks])


def test_cluster_info_kubeconfig_server_is_read_from_the_configmap():
    kubeconfig = yaml.safe_dump(
        {"clusters": [{"name": "", "cluster": {"server": "https://10.200.0.1:6443"}}]}
    )
    body = json.dumps({"data": {"kubeconfig": kubeconfig}}).encode()
    assert doctor._server_of(body) == "https://10.200.0.1:6443"
    for bad in (b"{}", b'{"data": {"kubeconfig": "clusters: []"}}', b"not json"):
        with pytest.raises((ValueError, KeyError, IndexError, TypeError)):
            doctor._server_of(bad)


def test_flannel_subnet_env_mtu(tmp_path):
    env = tmp_path / "subnet.env"
    assert doctor._flannel_mtu(env) is None
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1370\nFLANNEL_IPMASQ=true\n")
    assert doctor._flannel_mtu(env) == 1370


@pytest.mark.allow_subprocess
def test_default_runner_never_raises():
    from builder.hub import routing

    res = routing.default_runner(["nodeforge-no-such-program", "x"])
    assert res.returncode == 127 and "not found" in res.stderr
    res = routing.default_runner(["sleep", "5"], timeout=0.3)
    assert res.returncode == 124 and "timed out" in res.stderr
