"""`hub doctor` and the hub's forwarding against a lab in a private network namespace.

The lab: a namespace of its own with a real wireguard-go interface (10.200.0.1/16, MTU
1420), real forwarding and iptables state, a real VXLAN device flannel.1 over it (as
flannel makes it with --iface), a TLS stand-in for kube-apiserver on 10.200.0.1:6443
with a certificate made here (with or without the overlay SAN) that answers cluster-info,
and a stand-in `kubeadm token create --dry-run`. Each check is broken once, alone, and
must fail with its message and fix (exit 1); with everything in place the doctor exits 0.
All traffic stays inside the namespace created here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.enroll_lab import missing_tools, sh

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parents[1]
HUB_IP = "10.200.0.1"
# wireguard-go keeps its socket in /var/run/wireguard/<name>.sock, shared by every
# namespace: a name of our own, never wg0 (the host's or another test's)
WG = f"nfcp{os.getpid() % 100000}w"
NET = "10.200.0.0/16"


def _need() -> None:
    miss = missing_tools()
    if not (Path("/usr/sbin/iptables").exists() or Path("/sbin/iptables").exists()):
        miss.append("iptables")
    if miss:
        pytest.skip(f"needs {', '.join(miss)}")


def make_certs(tmp: Path, sans: list[str]) -> tuple[Path, Path, Path]:
    """A CA and an API-server-like certificate with ``sans`` (IPs or DNS names)."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for s in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            names.append(x509.DNSName(s))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tmp.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (tmp / "ca.crt").write_bytes(ca.public_bytes(pem))
    (tmp / "apiserver.crt").write_bytes(cert.public_bytes(pem))
    (tmp / "apiserver.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp / "ca.crt", tmp / "apiserver.crt", tmp / "apiserver.key"


class CpLab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = f"nfcp{os.getpid()}"
        self.server: subprocess.Popen | None = None
        sh(["ip", "netns", "add", self.ns])
        self.x(["ip", "link", "set", "lo", "up"])
        self.x(["wireguard-go", WG])
        key = tmp / "wg.key"
        key.write_text(sh(["wg", "genkey"]).stdout)
        key.chmod(0o600)
        self.x(["wg", "set", WG, "private-key", str(key), "listen-port", "51820"])
        self.x(["ip", "address", "add", f"{HUB_IP}/16", "dev", WG])
        self.x(["ip", "link", "set", "dev", WG, "mtu", "1420", "up"])
        self.x(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.flannel(WG, 1370)
        self.ca, self.crt, self.key = make_certs(tmp / "pki", [HUB_IP, "hub.example.com"])
        (tmp / "admin.conf").write_text("stand-in kubeconfig\n")
        kubeadm = tmp / "bin" / "kubeadm"
        kubeadm.parent.mkdir()
        text = (HERE / "kubeadm_token_standin.py").read_text().split("\n", 1)[1]
        kubeadm.write_text(f"#!{sys.executable}\n{text}")
        kubeadm.chmod(0o755)
        self.join = {
            "provider": "kubeadm",
            "kubeadm": str(kubeadm),
            "kubeconfig": str(tmp / "admin.conf"),
            "cluster_ca": str(self.ca),
        }
        self.serve(f"https://{HUB_IP}:6443")

    def x(self, argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.ns, *argv], **kw)

    def flannel(self, dev: str, mtu: int) -> None:
        self.x(["ip", "link", "delete", "flannel.1"], check=False)
        self.x(
            ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", dev]
            + ["local", HUB_IP, "dstport", "8472", "nolearning"]
        )
        self.x(["ip", "link", "set", "flannel.1", "mtu", str(mtu), "up"])

    def serve(self, server: str, crt: Path | None = None, key: Path | None = None) -> None:
        self.stop_server()
        argv = [sys.executable, str(HERE / "apiserver_standin.py"), "--bind", HUB_IP]
        argv += ["--cert", str(crt or self.crt), "--key", str(key or self.key)]
        argv += ["--server", server]
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv], stdout=subprocess.PIPE, text=True
        )
        assert self.server.stdout is not None
        assert self.server.stdout.readline().strip() == "ready"

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(timeout=10)

    def doctor(self, **join) -> dict:
        spec = {
            "target": {
                "interface": WG,
                "hub_ip": HUB_IP,
                "network": NET,
                "mtu": 1420,
                "config_path": "/etc/nodeforge-hub/hub.json",
                "join": {**self.join, **join},
            },
            "probes": {
                "apiserver_cert": str(self.tmp / "pki" / "missing.crt"),
                "flannel_env": str(self.tmp / "subnet.env"),
                "cni_conf_dir": str(self.tmp / "net.d"),
            },
        }
        p = self.x(
            [sys.executable, str(HERE / "doctor_client.py"), json.dumps(spec)],
            cwd=REPO,
            timeout=120,
        )
        return json.loads(p.stdout.strip().splitlines()[-1])

    def enable(self) -> list[str]:
        p = self.x(
            [sys.executable, str(HERE / "doctor_client.py"), json.dumps({"enable": WG})],
            cwd=REPO,
            timeout=60,
        )
        return json.loads(p.stdout.strip().splitlines()[-1])["done"]

    def close(self) -> None:
        self.stop_server()
        for pid in sh(["ip", "netns", "pids", self.ns], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGTERM)
        sh(["ip", "netns", "del", self.ns], check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _need()
    lab = CpLab(tmp_path_factory.mktemp("cplab"))
    try:
        yield lab
    finally:
        lab.close()


def failed(res: dict) -> dict[str, dict]:
    return {c["name"]: c for c in res["checks"] if not c["ok"]}


def test_all_good_is_exit_0(lab):
    res = lab.doctor()
    assert failed(res) == {}, res
    assert res["exit"] == 0
    names = [c["name"] for c in res["checks"]]
    assert names == [
        "interface",
        "forwarding",
        "firewall",
        "route",
        "apiserver-cert",
        "cluster-info",
        "join-token",
        "cni",
    ]


def test_interface_down(lab):
    lab.x(["ip", "link", "set", "dev", WG, "down"])
    try:
        res = lab.doctor()
    finally:
        lab.x(["ip", "link", "set", "dev", WG, "up"])
    bad = failed(res)
    assert res["exit"] == 1
    # a down interface also loses its routes: both say so, nothing else fails
    assert set(bad) == {"interface", "route"}, bad
    assert bad["interface"]["message"] == f"{WG} is down"
    assert bad["interface"]["fix"] == f"ip link set dev {WG} up"
    assert bad["route"]["fix"] == f"ip route replace {NET} dev {WG}"
    assert lab.doctor()["exit"] == 0


def test_forwarding_off(lab):
    lab.x(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    try:
        res = lab.doctor()
    finally:
        lab.x(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    bad = failed(res)
    assert set(bad) == {"forwarding"} and res["exit"] == 1
    assert "net.ipv4.ip_forward = 0" in bad["forwarding"]["message"]
    assert bad["forwarding"]["fix"].startswith("sysctl -w net.ipv4.ip_forward=1")


def test_default_drop_forward_policy_then_enable_forwarding_fixes_it_once(lab):
    lab.x(["iptables", "-P", "FORWARD", "DROP"])
    lab.x(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    try:
        bad = failed(lab.doctor())
        assert set(bad) == {"forwarding", "firewall"}, bad
        assert bad["firewall"]["fix"] == f"iptables -I FORWARD 1 -i {WG} -o {WG} -j ACCEPT"
        assert lab.enable() == [
            "net.ipv4.ip_forward=1",
            f"iptables -I FORWARD 1 -i {WG} -o {WG} -j ACCEPT",
        ]
        assert lab.enable() == []  # idempotent: nothing changed the second time
        rules = lab.x(["iptables", "-S", "FORWARD"]).stdout.splitlines()
        assert rules.count(f"-A FORWARD -i {WG} -o {WG} -j ACCEPT") == 1
        assert lab.doctor()["exit"] == 0
    finally:
        lab.x(["iptables", "-F", "FORWARD"])
        lab.x(["iptables", "-P", "FORWARD", "ACCEPT"])
        lab.x(["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def test_catch_all_reject_rule_counts_as_default_drop(lab):
    lab.x(["iptables", "-A", "FORWARD", "-j", "REJECT"])
    try:
        assert set(failed(lab.doctor())) == {"firewall"}
        assert lab.enable() == [f"iptables -I FORWARD 1 -i {WG} -o {WG} -j ACCEPT"]
        assert lab.doctor()["exit"] == 0
    finally:
        lab.x(["iptables", "-F", "FORWARD"])


def test_certificate_without_the_overlay_san(lab, tmp_path):
    _, crt, key = make_certs(tmp_path, ["192.0.2.10", "kubernetes.default"])
    lab.serve(f"https://{HUB_IP}:6443", crt, key)
    try:
        bad = failed(lab.doctor())
    finally:
        lab.serve(f"https://{HUB_IP}:6443")
    assert set(bad) == {"apiserver-cert"}, bad
    msg, fix = bad["apiserver-cert"]["message"], bad["apiserver-cert"]["fix"]
    assert f"lacks SAN {HUB_IP} (has: 192.0.2.10, kubernetes.default)" in msg
    # the fix keeps every SAN the old certificate had and adds the overlay IP first
    assert (
        "kubeadm init phase certs apiserver "
        f"--apiserver-cert-extra-sans={HUB_IP},192.0.2.10,kubernetes.default"
    ) in fix
    assert fix.index("mv ") < fix.index("kubeadm init phase certs apiserver")


def test_no_api_server_falls_back_to_the_certificate_file(lab):
    lab.stop_server()
    try:
        res = lab.doctor()
    finally:
        lab.serve(f"https://{HUB_IP}:6443")
    bad = failed(res)
    assert set(bad) == {"apiserver-cert", "cluster-info"}, bad
    assert f"no API server answers TLS at {HUB_IP}:6443" in bad["apiserver-cert"]["message"]
    assert "kubeadm init --config kubeadm-init.yaml" in bad["apiserver-cert"]["fix"]


def test_cluster_info_server_outside_the_overlay(lab):
    lab.serve("https://192.0.2.10:6443")
    try:
        bad = failed(lab.doctor())
    finally:
        lab.serve(f"https://{HUB_IP}:6443")
    assert set(bad) == {"cluster-info"}, bad
    assert (
        "https://192.0.2.10:6443 is outside the overlay 10.200.0.0/16"
        in (bad["cluster-info"]["message"])
    )
    assert f"controlPlaneEndpoint: {HUB_IP}:6443" in bad["cluster-info"]["fix"]
    assert f"server: https://{HUB_IP}:6443" in bad["cluster-info"]["fix"]


def test_join_provider_cannot_mint(lab):
    bad = failed(lab.doctor(kubeconfig=str(lab.tmp / "gone.conf")))
    assert set(bad) == {"join-token"}, bad
    assert "failed to load admin kubeconfig" in bad["join-token"]["message"]
    assert "--dry-run" in bad["join-token"]["message"]


def test_cni_on_the_wrong_interface_and_pod_mtu_too_big(lab):
    """flannel without --iface on a 1500-byte NIC: VXLAN over eth9 and pods at 1450.

    (The kernel itself refuses a VXLAN MTU above its lower device's MTU - 50, so over wg0
    a too-big flannel.1 cannot exist; the pods' MTU from subnet.env can.)
    """
    env = lab.tmp / "subnet.env"
    try:
        lab.x(["ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p"])
        lab.x(["ip", "link", "set", "eth9", "mtu", "1500", "up"])
        lab.flannel("eth9", 1450)
        bad = failed(lab.doctor())
        assert set(bad) == {"cni"}, bad
        assert bad["cni"]["message"] == (
            f"flannel.1 runs over eth9, not {WG}; flannel.1 MTU 1450 > 1420 - 50 = 1370"
        )
        assert f"--iface={WG}" in bad["cni"]["fix"]
        lab.flannel(WG, 1370)
        env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\n")
        bad = failed(lab.doctor())
        assert set(bad) == {"cni"}, bad
        assert bad["cni"]["message"] == f"{env}: FLANNEL_MTU=1450 > 1370"
        env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1370\n")
        assert lab.doctor()["exit"] == 0
        lab.x(["ip", "link", "delete", "flannel.1"])
        bad = failed(lab.doctor())
        assert "no flannel/calico VXLAN device" in bad["cni"]["message"]
    finally:
        env.unlink(missing_ok=True)
        lab.flannel(WG, 1370)
        lab.x(["ip", "link", "delete", "eth9"], check=False)
    assert lab.doctor()["exit"] == 0
