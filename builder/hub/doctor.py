"""``builder hub doctor``: is a running control plane ready for nodes that join through the hub?

Checks, each with the exact fix when it fails:
- ``interface``: the hub's WireGuard interface is up with the configured address and MTU;
- ``forwarding``: ``net.ipv4.ip_forward`` is 1;
- ``firewall``: a FORWARD chain that drops by default accepts ``-i wg0 -o wg0``;
- ``route``: the overlay is routed through the interface;
- ``apiserver-cert``: the API server's certificate (TLS on overlay_ip:6443, else
  /etc/kubernetes/pki/apiserver.crt) carries the overlay IP;
- ``cluster-info``: the server in ``kube-public/cluster-info`` (read anonymously over the
  overlay, as a joining node does) is inside the overlay: kubeadm's TLS bootstrap uses it;
- ``join-token``: the join provider can mint a token (``kubeadm token create --dry-run``:
  the dry-run client reads from the cluster and only prints the writes);
- ``cni``: the CNI's VXLAN device runs over the interface with an MTU that fits inside it
  (flannel.1 / vxlan.calico MTU <= WireGuard MTU - 50; flannel's subnet.env too).

Every probe is injectable (paths, a runner for ``ip``/``iptables``/``kubeadm``, timeouts)
and network input is bounded (size, time). The library never prints: it returns checks.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import shlex
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509

from builder.hub.kubeadm import VXLAN_OVERHEAD
from builder.hub.provider import BOOTSTRAP_RE, ca_cert_hash
from builder.hub.routing import IP_FORWARD, Runner, accept_rule, default_runner, forward_state

CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
CNI_VXLAN_PREFIXES = ("flannel.", "vxlan.calico", "vxlan-v6.calico")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What the control plane should look like (from hub.json)."""

    interface: str
    hub_ip: ipaddress.IPv4Address
    network: ipaddress.IPv4Network
    mtu: int = 1420
    api_port: int = 6443
    config_path: str = "/etc/nodeforge-hub/hub.json"
    join: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_hub_config(cls, cfg: Any) -> Target:
        api = str(cfg.join.get("api_server") or f"{cfg.wg.hub_ip}:6443")
        port = api.rsplit(":", 1)[-1]
        return cls(
            interface=cfg.wg.interface,
            hub_ip=cfg.wg.hub_ip,
            network=cfg.wg.network,
            mtu=cfg.wg.mtu,
            api_port=int(port) if port.isdigit() else 6443,
            config_path=str(cfg.path),
            join=dict(cfg.join),
        )


@dataclass(frozen=True)
class Probes:
    """Where the doctor looks; tests point these at a lab."""

    runner: Runner = default_runner
    ip_forward: Path = IP_FORWARD
    apiserver_cert: Path = Path("/etc/kubernetes/pki/apiserver.crt")
    flannel_env: Path = Path("/run/flannel/subnet.env")
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    kubeadm_config: str = "kubeadm-init.yaml"
    timeout: float = 5.0
    max_bytes: int = 1 << 20


def _ip_json(probes: Probes, argv: list[str]) -> Any:
    res = probes.runner(argv)
    if res.returncode != 0:
        return None
    try:
        return json.loads(res.stdout or "null")
    except ValueError:
        return None


def check_interface(t: Target, p: Probes) -> Check:
    name = "interface"
    links = _ip_json(p, ["ip", "-j", "address", "show", "dev", t.interface])
    start = f"builder hub serve --config {shlex.quote(t.config_path)}"
    if not links:
        return Check(
            name,
            False,
            f"{t.interface} does not exist",
            f"start the hub, it creates {t.interface} with {t.hub_ip}/{t.network.prefixlen}: "
            f"{start}",
        )
    link = links[0]
    problems, fixes = [], []
    if "UP" not in (link.get("flags") or []):
        problems.append(f"{t.interface} is down")
        fixes.append(f"ip link set dev {t.interface} up")
    addrs = {
        (a.get("local"), a.get("prefixlen"))
        for a in link.get("addr_info") or []
        if a.get("family") == "inet"
    }
    if (str(t.hub_ip), t.network.prefixlen) not in addrs:
        have = ", ".join(f"{a}/{n}" for a, n in sorted(addrs, key=str)) or "no IPv4 address"
        problems.append(f"{t.interface} has {have}, not {t.hub_ip}/{t.network.prefixlen}")
        fixes.append(f"ip address add {t.hub_ip}/{t.network.prefixlen} dev {t.interface}")
    if link.get("mtu") != t.mtu:
        problems.append(f"{t.interface} MTU is {link.get('mtu')}, hub.json says {t.mtu}")
        fixes.append(f"ip link set dev {t.interface} mtu {t.mtu}")
    if problems:
        return Check(name, False, "; ".join(problems), "; ".join(fixes))
    return Check(name, True, f"{t.interface} up with {t.hub_ip}/{t.network.prefixlen}, MTU {t.mtu}")


def check_forwarding(t: Target, p: Probes) -> list[Check]:
    st = forward_state(t.interface, sysctl=p.ip_forward, runner=p.runner)
    out = [
        Check("forwarding", True, "net.ipv4.ip_forward = 1")
        if st.ip_forward
        else Check(
            "forwarding",
            False,
            "net.ipv4.ip_forward = 0: the hub does not pass traffic between nodes",
            "sysctl -w net.ipv4.ip_forward=1 && echo net.ipv4.ip_forward=1 > "
            "/etc/sysctl.d/99-nodeforge-hub.conf",
        )
    ]
    rule = " ".join(accept_rule(t.interface))
    if not st.iptables:
        out.append(Check("firewall", True, "no iptables: no FORWARD chain to check"))
    elif st.firewall_ok:
        why = f"policy {st.policy}" + (", accept rule present" if st.accept_rule else "")
        out.append(Check("firewall", True, f"FORWARD {why}"))
    else:
        out.append(
            Check(
                "firewall",
                False,
                f"the FORWARD chain drops (policy {st.policy}) and nothing accepts "
                f"{t.interface} -> {t.interface}",
                f"iptables -I FORWARD 1 {rule}",
            )
        )
    return out


def check_route(t: Target, p: Probes) -> Check:
    hosts = [t.network.network_address + 2, t.network.broadcast_address - 1]
    wrong = []
    for h in hosts:
        if h == t.hub_ip:
            h = h + 1 if h + 1 < t.network.broadcast_address else h - 1
        routes = _ip_json(p, ["ip", "-4", "-j", "route", "get", str(h)])
        dev = routes[0].get("dev") if routes else None
        if dev != t.interface:
            wrong.append(f"{h} via {dev or 'nothing'}")
    if wrong:
        return Check(
            "route",
            False,
            f"the overlay {t.network} is not routed through {t.interface}: {', '.join(wrong)}",
            f"ip route replace {t.network} dev {t.interface}",
        )
    return Check("route", True, f"{t.network} routed through {t.interface}")


def _peer_cert(host: str, port: int, timeout: float) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("no certificate")
    return der


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [str(i) for i in ext.get_values_for_type(x509.IPAddress)]
    return ext.get_values_for_type(x509.DNSName), ips


def check_apiserver_cert(t: Target, p: Probes) -> Check:
    name = "apiserver-cert"
    where = f"{t.hub_ip}:{t.api_port}"
    try:
        cert = x509.load_der_x509_certificate(_peer_cert(str(t.hub_ip), t.api_port, p.timeout))
        source = f"the API server at {where}"
    except (OSError, ValueError) as exc:
        try:
            cert = x509.load_pem_x509_certificate(p.apiserver_cert.read_bytes()[: p.max_bytes])
        except (OSError, ValueError):
            return Check(
                name,
                False,
                f"no API server answers TLS at {where} ({exc}) and {p.apiserver_cert} "
                "is not readable",
                f"create the control plane inside the overlay: kubeadm init --config "
                f"{p.kubeadm_config} (written by builder hub init)",
            )
        source = f"{p.apiserver_cert} (the API server at {where} did not answer: {exc})"
    dns, ips = _sans(cert)
    if str(t.hub_ip) in ips:
        return Check(name, True, f"{source} has SAN {t.hub_ip}")
    crt = p.apiserver_cert
    key = crt.with_suffix(".key")
    sans = ",".join(dict.fromkeys([str(t.hub_ip), *ips, *dns]))
    fix = (
        f"mkdir -p /root/pki-old && mv {crt} {key} /root/pki-old/ && "
        f"kubeadm init phase certs apiserver --apiserver-cert-extra-sans={sans}; "
        "then restart the API server (move /etc/kubernetes/manifests/kube-apiserver.yaml "
        "out and back) and add the IP to ClusterConfiguration.apiServer.certSANs "
        "(kubectl -n kube-system edit configmap kubeadm-config) so renewals keep it"
    )
    have = ", ".join([*ips, *dns]) or "none"
    return Check(name, False, f"{source} lacks SAN {t.hub_ip} (has: {have})", fix)


def _get_cluster_info(t: Target, p: Probes) -> tuple[int, bytes]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # like kubeadm's first, unpinned discovery request
    conn = http.client.HTTPSConnection(str(t.hub_ip), t.api_port, timeout=p.timeout, context=ctx)
    try:
        conn.request("GET", CLUSTER_INFO_PATH, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(p.max_bytes + 1)
        if len(body) > p.max_bytes:
            raise ValueError(f"answer larger than {p.max_bytes} bytes")
        return resp.status, body
    finally:
        conn.close()


def _server_of(body: bytes) -> str:
    cm = json.loads(body)
    kubeconfig = yaml.safe_load(cm["data"]["kubeconfig"])
    return str(kubeconfig["clusters"][0]["cluster"]["server"])


def _addresses(host: str, timeout: float) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    finally:
        socket.setdefaulttimeout(old)
    return [ipaddress.ip_address(i[4][0]) for i in infos]


def check_cluster_info(t: Target, p: Probes) -> Check:
    name = "cluster-info"
    endpoint = f"{t.hub_ip}:{t.api_port}"
    try:
        status, body = _get_cluster_info(t, p)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Check(
            name,
            False,
            f"cannot read cluster-info from https://{endpoint}: {exc}",
            f"the API server must listen on the overlay: kubeadm init --config "
            f"{p.kubeadm_config} (advertiseAddress {t.hub_ip})",
        )
    if status != 200:
        return Check(
            name,
            False,
            f"GET {CLUSTER_INFO_PATH} at {endpoint} answered HTTP {status}: joining nodes "
            "cannot discover the cluster",
            "kubeadm init phase bootstrap-token (creates the cluster-info ConfigMap and the "
            "RBAC rule that lets anonymous clients read it)",
        )
    try:
        server = _server_of(body)
        host = urlsplit(server).hostname or ""
    except (ValueError, KeyError, IndexError, TypeError, yaml.YAMLError) as exc:
        return Check(name, False, f"cluster-info has no usable kubeconfig: {exc}", "")
    addrs = _addresses(host, p.timeout)
    if addrs and all(a in t.network for a in addrs):
        return Check(name, True, f"cluster-info server {server} is inside {t.network}")
    want = f"https://{t.hub_ip}:{t.api_port}"
    return Check(
        name,
        False,
        f"cluster-info server {server} is outside the overlay {t.network}: nodes bootstrap "
        "their kubelet against it and only route the overlay",
        f"kubectl -n kube-system edit configmap kubeadm-config (ClusterConfiguration."
        f"controlPlaneEndpoint: {endpoint}); kubectl -n kube-public edit configmap "
        f"cluster-info (kubeconfig server: {want}); kubectl -n kube-system edit configmap "
        f"kube-proxy (kubeconfig.conf server: {want}); the API server certificate needs "
        f"SAN {t.hub_ip} (see apiserver-cert)",
    )


def check_join_token(t: Target, p: Probes) -> Check:
    name = "join-token"
    j = t.join
    kind = j.get("provider", "static")
    if kind == "static":
        token = str(j.get("token") or "")
        if token.startswith("file:"):
            try:
                path = Path(token[5:])
                base = Path(str(j.get("_base", ".")))
                token = (path if path.is_absolute() else base / path).read_text().strip()
            except OSError as exc:
                return Check(name, False, f"join.token: cannot read {exc.filename}", "")
        if not BOOTSTRAP_RE.match(token):
            return Check(
                name,
                False,
                "join.token is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})",
                "kubeadm token create --ttl 0 and put it in hub.json join.token",
            )
        return Check(name, True, "static provider: bootstrap token configured")
    kubeadm_bin = str(j.get("kubeadm") or "kubeadm")
    kubeconfig = str(j.get("kubeconfig") or "/etc/kubernetes/admin.conf")
    argv = [kubeadm_bin, "token", "create", "--dry-run", "--ttl", "1m"]
    argv += ["--description", "nodeforge hub doctor", "--kubeconfig", kubeconfig]
    res = p.runner(argv)
    lines = (res.stdout or "").strip().splitlines()
    if res.returncode != 0 or not lines or not BOOTSTRAP_RE.match(lines[-1].strip()):
        tail = ((res.stderr or "") + (res.stdout or "")).strip().splitlines()[-3:]
        return Check(
            name,
            False,
            f"{shlex.join(argv)} failed (exit {res.returncode}): {' / '.join(tail)}",
            f"the hub needs {kubeconfig} (readable by the hub) and a reachable API server: "
            f"kubectl --kubeconfig {kubeconfig} get --raw /readyz",
        )
    ca = Path(str(j.get("cluster_ca") or "/etc/kubernetes/pki/ca.crt"))
    if not j.get("ca_cert_hashes"):
        try:
            ca_cert_hash(ca.read_bytes()[: p.max_bytes])
        except (OSError, ValueError) as exc:
            return Check(
                name,
                False,
                f"cannot hash the cluster CA {ca}: {exc}",
                f"point join.cluster_ca in {t.config_path} at the cluster CA (ca.crt)",
            )
    return Check(name, True, "kubeadm can mint a bootstrap token (dry run)")


def _cni_fix(t: Target) -> str:
    inner = t.mtu - VXLAN_OVERHEAD
    return (
        f"flannel: add --iface={t.interface} to the kube-flannel container's args "
        "(kubectl -n kube-flannel edit daemonset kube-flannel-ds), delete the old "
        "flannel.1 (ip link delete flannel.1) and restart flannel (kubectl -n kube-flannel "
        "rollout restart daemonset kube-flannel-ds); calico: kubectl patch "
        "installation.operator.tigera.io default --type merge -p "
        f'\'{{"spec":{{"calicoNetwork":{{"mtu":{inner},'
        f'"nodeAddressAutodetectionV4":{{"interface":"{t.interface}"}}}}}}}}\''
    )


def check_cni(t: Target, p: Probes) -> Check:
    name = "cni"
    limit = t.mtu - VXLAN_OVERHEAD
    links = _ip_json(p, ["ip", "-d", "-j", "link", "show", "type", "vxlan"]) or []
    ours = [lk for lk in links if str(lk.get("ifname", "")).startswith(CNI_VXLAN_PREFIXES)]
    problems = []
    for lk in ours:
        info = (lk.get("linkinfo") or {}).get("info_data") or {}
        dev, local = info.get("link"), info.get("local")
        on_wg = dev == t.interface or (dev is None and local and _in(local, t.network))
        if not on_wg:
            problems.append(
                f"{lk['ifname']} runs over {dev or local or 'the default route'}, not {t.interface}"
            )
        if int(lk.get("mtu") or 0) > limit:
            problems.append(f"{lk['ifname']} MTU {lk.get('mtu')} > {t.mtu} - 50 = {limit}")
    env_mtu = _flannel_mtu(p.flannel_env)
    if env_mtu is not None and env_mtu > limit:
        problems.append(f"{p.flannel_env}: FLANNEL_MTU={env_mtu} > {limit}")
    if problems:
        return Check(name, False, "; ".join(problems), _cni_fix(t))
    if not ours:
        confs = sorted(x.name for x in p.cni_conf_dir.glob("*.conf*")) if _isdir(p) else []
        what = f"CNI config {', '.join(confs)} but " if confs else "no CNI config and "
        return Check(
            name,
            False,
            f"{what}no flannel/calico VXLAN device: nodes stay NotReady without a CNI "
            f"over {t.interface}",
            f"install flannel with --iface={t.interface} and Network = the pod CIDR (pod MTU "
            f"{limit}), or calico with calicoNetwork.mtu {limit} and "
            f"nodeAddressAutodetectionV4.interface {t.interface} (builder hub init prints them)",
        )
    names = ", ".join(lk["ifname"] for lk in ours)
    return Check(name, True, f"{names} over {t.interface}, MTU <= {limit}")


def _in(addr: str, net: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(addr) in net
    except ValueError:
        return False


def _isdir(p: Probes) -> bool:
    try:
        return p.cni_conf_dir.is_dir()
    except OSError:
        return False


def _flannel_mtu(path: Path) -> int | None:
    try:
        text = path.read_text()[:65536]
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "FLANNEL_MTU" and value.strip().isdigit():
            return int(value.strip())
    return None


def doctor(target: Target, probes: Probes | None = None) -> list[Check]:
    """Run every check against the running control plane; never raises for a failed probe."""
    p = probes or Probes()
    return [
        check_interface(target, p),
        *check_forwarding(target, p),
        check_route(target, p),
        check_apiserver_cert(target, p),
        check_cluster_info(target, p),
        check_join_token(target, p),
        check_cni(target, p),
    ]


def exit_code(checks: Sequence[Check]) -> int:
    return 0 if all(c.ok for c in checks) else 1


def format_checks(checks: Sequence[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.message}")
        if not c.ok and c.fix:
            lines.append(f"     fix: {c.fix}")
    bad = sum(not c.ok for c in checks)
    lines.append("ready for nodes" if not bad else f"{bad} check(s) failed")
    return "\n".join(lines) + "\n"
