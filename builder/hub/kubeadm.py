"""The control plane's kubeadm configuration for a new cluster, set up *inside* the overlay.

Nodes get ``api_server = <hub overlay IP>:6443`` and route only the overlay, and kubeadm's
TLS bootstrap uses the server named in ``kube-public/cluster-info`` (the cluster's
``controlPlaneEndpoint``). So the control plane lives in the overlay:
``controlPlaneEndpoint`` and ``localAPIEndpoint.advertiseAddress`` = the hub's overlay IP,
that IP (and the public names) in ``apiServer.certSANs``, the control-plane kubelet's
``node-ip`` in the overlay, CRI-O's socket, pod and service subnets from the profile.

Upstream facts (UPSTREAM.md): the kubeadm config API ``kubeadm.k8s.io/v1beta4`` is the one
written since Kubernetes 1.31 (k/k PR #125029; v1beta3 removed by PR #136016); its types
(``kubeletExtraArgs`` and ``extraArgs`` are lists of ``{name, value}``) are in
kubernetes/kubernetes ``cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go`` @1329935;
CRI-O's socket is ``unix:///var/run/crio/crio.sock``. Flannel's VXLAN backend takes the
MTU of the interface given with ``--iface`` and subtracts 50 (flannel-io/flannel
``pkg/backend/vxlan``, v0.28.9); Calico documents IPv4 VXLAN as a 50-byte header and
``nodeAddressAutodetectionV4.interface`` / ``calicoNetwork.mtu`` as its settings
(projectcalico/calico ``calico/networking/mtu.md``, ``ip-autodetection.md``).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import UsageError, ValidationError
from builder.fsutil import atomic_write

API_V1BETA4 = "kubeadm.k8s.io/v1beta4"
CRIO_SOCKET = "unix:///var/run/crio/crio.sock"
API_PORT = 6443
VXLAN_OVERHEAD = 50  # IPv4 VXLAN: flannel's encapOverhead, Calico's MTU table
FILENAME = "kubeadm-init.yaml"
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")


def api_version_for(kubernetes_version: str) -> str:
    """The kubeadm config API version kubeadm writes for this Kubernetes release."""
    m = _VERSION_RE.match(str(kubernetes_version).strip())
    if not m:
        raise UsageError(
            f"kubernetes.version: {kubernetes_version!r} is not MAJOR.MINOR.PATCH (e.g. 1.35.0)"
        )
    major, minor = int(m.group(1)), int(m.group(2))
    if major != 1 or minor < 31:
        raise UsageError(
            f"kubernetes.version: {kubernetes_version}: the control-plane configuration is "
            "written for Kubernetes 1.31 or newer (kubeadm config API v1beta4)"
        )
    return API_V1BETA4


def vxlan_mtu(wg_mtu: int) -> int:
    """The inner MTU a VXLAN CNI running over the WireGuard interface gets."""
    return int(wg_mtu) - VXLAN_OVERHEAD


@dataclass(frozen=True)
class ControlPlane:
    """What the kubeadm configuration is made from (the hub config and the site profile)."""

    kubernetes_version: str
    hub_ip: str
    overlay_cidr: str
    pod_cidr: str
    service_cidr: str
    public_names: tuple[str, ...] = ()
    interface: str = "wg0"
    mtu: int = 1420
    cri_socket: str = CRIO_SOCKET
    node_name: str | None = None
    api_port: int = API_PORT
    extra_sans: tuple[str, ...] = field(default=())

    @property
    def endpoint(self) -> str:
        return f"{self.hub_ip}:{self.api_port}"

    def check(self, where: str = "control plane") -> None:
        """Every inconsistency at once, ``where: key: message`` (ValidationError)."""
        problems: list[str] = []
        try:
            api_version_for(self.kubernetes_version)
        except UsageError as exc:
            problems.append(f"{where}: {exc.message}")
        nets: dict[str, ipaddress.IPv4Network] = {}
        for key, value in (
            ("wireguard.overlay_cidr", self.overlay_cidr),
            ("kubernetes.pod_cidr", self.pod_cidr),
            ("kubernetes.service_cidr", self.service_cidr),
        ):
            try:
                nets[key] = ipaddress.IPv4Network(value, strict=True)
            except (ValueError, TypeError) as exc:
                problems.append(f"{where}: {key}: {value!r}: {exc}")
        keys = sorted(nets)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                if nets[a].overlaps(nets[b]):
                    problems.append(f"{where}: {b}: {nets[b]} overlaps {a} {nets[a]}")
        try:
            hip = ipaddress.IPv4Address(self.hub_ip)
            net = nets.get("wireguard.overlay_cidr")
            if net is not None and hip not in net:
                problems.append(f"{where}: wireguard.hub_overlay_ip: {hip} is not inside {net}")
        except ValueError as exc:
            problems.append(f"{where}: wireguard.hub_overlay_ip: {exc}")
        if not 1 <= int(self.api_port) <= 65535:
            problems.append(f"{where}: api_port: {self.api_port} is not a TCP port")
        if vxlan_mtu(self.mtu) < 1280:
            problems.append(
                f"{where}: wireguard.mtu: {self.mtu} leaves {vxlan_mtu(self.mtu)} for a VXLAN "
                "CNI; keep it at 1330 or more"
            )
        if problems:
            raise ValidationError(problems)

    def cert_sans(self) -> list[str]:
        out: list[str] = []
        for n in (self.hub_ip, *self.public_names, *self.extra_sans):
            n = str(n).strip()
            if n and n not in out:
                out.append(n)
        return out


def documents(cp: ControlPlane) -> list[dict[str, Any]]:
    """InitConfiguration + ClusterConfiguration as plain data (v1beta4 field names)."""
    cp.check()
    api = api_version_for(cp.kubernetes_version)
    node_reg: dict[str, Any] = {
        "criSocket": cp.cri_socket,
        "kubeletExtraArgs": [{"name": "node-ip", "value": cp.hub_ip}],
    }
    if cp.node_name:
        node_reg = {"name": cp.node_name, **node_reg}
    init = {
        "apiVersion": api,
        "kind": "InitConfiguration",
        "localAPIEndpoint": {"advertiseAddress": cp.hub_ip, "bindPort": int(cp.api_port)},
        "nodeRegistration": node_reg,
    }
    version = cp.kubernetes_version.strip()
    cluster = {
        "apiVersion": api,
        "kind": "ClusterConfiguration",
        "kubernetesVersion": version if version.startswith("v") else f"v{version}",
        "controlPlaneEndpoint": cp.endpoint,
        "apiServer": {"certSANs": cp.cert_sans()},
        "networking": {"podSubnet": cp.pod_cidr, "serviceSubnet": cp.service_cidr},
    }
    return [init, cluster]


def render(cp: ControlPlane) -> str:
    head = (
        "# kubeadm configuration for the control plane inside the overlay (nodeforge).\n"
        f"# Run on the hub after its {cp.interface} is up: kubeadm init --config {FILENAME}\n"
    )
    body = yaml.safe_dump_all(documents(cp), sort_keys=False, default_flow_style=False)
    return head + body


def cni_settings(cp: ControlPlane) -> dict[str, Any]:
    """Settings for a CNI that runs over the WireGuard interface (VXLAN inside WireGuard)."""
    inner = vxlan_mtu(cp.mtu)
    return {
        "interface": cp.interface,
        "wireguard_mtu": int(cp.mtu),
        "vxlan_overhead": VXLAN_OVERHEAD,
        "pod_mtu": inner,
        "flannel": {
            "args": [f"--iface={cp.interface}"],
            "net-conf.json": {"Network": cp.pod_cidr, "Backend": {"Type": "vxlan"}},
            "expected_mtu": inner,
            "note": (
                f"flannel takes the MTU of --iface ({cp.mtu}) and subtracts 50: "
                f"FLANNEL_MTU={inner} in /run/flannel/subnet.env, flannel.1 at {inner}"
            ),
        },
        "calico": {
            "installation": {
                "calicoNetwork": {
                    "mtu": inner,
                    "nodeAddressAutodetectionV4": {"interface": cp.interface},
                    "ipPools": [
                        {
                            "cidr": cp.pod_cidr,
                            "encapsulation": "VXLAN",
                            "natOutgoing": "Enabled",
                        }
                    ],
                }
            },
            "manifest_env": {"IP_AUTODETECTION_METHOD": f"interface={cp.interface}"},
            "manifest_veth_mtu": str(inner),
        },
    }


def plan(
    cp: ControlPlane,
    *,
    hub_dir: Path,
    config_path: Path,
    kubeadm_config: Path,
    ca_cert: Path,
    ca_pin: str,
    hub_public_key: str,
) -> dict[str, Any]:
    """The next steps and the profile snippet as data (the CLI prints text or JSON)."""
    cfg = shlex.quote(str(config_path))
    steps = [
        {
            "title": "start the hub (creates the WireGuard interface with the overlay address)",
            "commands": [f"builder hub serve --config {cfg}"],
            "why": f"kubeadm binds the API server and etcd to {cp.hub_ip}, which lives on "
            f"{cp.interface}",
        },
        {
            "title": "forward between nodes through the hub",
            "commands": [
                "sysctl -w net.ipv4.ip_forward=1",
                f"iptables -C FORWARD -i {cp.interface} -o {cp.interface} -j ACCEPT 2>/dev/null"
                f" || iptables -I FORWARD 1 -i {cp.interface} -o {cp.interface} -j ACCEPT",
            ],
            "why": "node-to-node traffic (pods across sites) goes node -> hub -> node",
        },
        {
            "title": "create the control plane inside the overlay",
            "commands": [f"kubeadm init --config {shlex.quote(str(kubeadm_config))}"],
            "why": f"controlPlaneEndpoint and advertiseAddress {cp.endpoint}, "
            f"certSANs {', '.join(cp.cert_sans())}, kubelet node-ip {cp.hub_ip}",
        },
        {
            "title": f"install a CNI over {cp.interface} (inner MTU {vxlan_mtu(cp.mtu)})",
            "commands": [
                "export KUBECONFIG=/etc/kubernetes/admin.conf",
                f"# flannel: kube-flannel.yml with Network {cp.pod_cidr} and "
                f"--iface={cp.interface} added to the kube-flannel container's args",
                "kubectl apply -f kube-flannel.yml",
            ],
            "why": f"VXLAN adds {VXLAN_OVERHEAD} bytes inside the WireGuard MTU {cp.mtu}",
        },
        {
            "title": "check that the control plane is ready for nodes",
            "commands": [f"builder hub doctor --config {cfg}"],
            "why": "every failed check prints its fix",
        },
    ]
    snippet = {
        "enrollment.ca_cert": f"file:{ca_cert}",
        "enrollment.ca_pin": ca_pin,
        "wireguard.hub_public_key": hub_public_key,
        "wireguard.hub_overlay_ip": cp.hub_ip,
        "wireguard.overlay_cidr": cp.overlay_cidr,
    }
    return {
        "hub_dir": str(hub_dir),
        "kubeadm_config": str(kubeadm_config),
        "control_plane_endpoint": cp.endpoint,
        "cert_sans": cp.cert_sans(),
        "steps": steps,
        "cni": cni_settings(cp),
        "profile_snippet": snippet,
    }


def write_config(directory: Path, cp: ControlPlane, *, force: bool = False) -> Path:
    """Write DIR/kubeadm-init.yaml (0644: it holds no secret) atomically."""
    path = directory / FILENAME
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists", hint="pass --force to replace it")
    text = render(cp)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, 0o644)
    return path


def format_plan(p: Mapping[str, Any]) -> str:
    """The plan as the text ``builder hub init`` prints."""
    lines = [f"kubeadm config: {p['kubeadm_config']}", "", "Next steps, in order:"]
    for i, step in enumerate(p["steps"], 1):
        lines.append(f"{i}. {step['title']}")
        lines += [f"     {c}" for c in step["commands"]]
    cni = p["cni"]
    lines += [
        "",
        f"CNI over {cni['interface']}: pod MTU {cni['pod_mtu']} "
        f"(= WireGuard MTU {cni['wireguard_mtu']} - VXLAN {cni['vxlan_overhead']})",
        f"  flannel: args {' '.join(cni['flannel']['args'])}, "
        f"net-conf.json Network {cni['flannel']['net-conf.json']['Network']}, Backend vxlan",
        f"  calico:  calicoNetwork.mtu {cni['pod_mtu']}, "
        f"nodeAddressAutodetectionV4.interface {cni['interface']}, VXLAN pool "
        f"{cni['calico']['installation']['calicoNetwork']['ipPools'][0]['cidr']}",
        "",
        "Profile snippet (paste into profiles/<site>.yaml):",
    ]
    nested: dict[str, dict[str, str]] = {}
    for key, value in p["profile_snippet"].items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    lines.append(yaml.safe_dump(nested, sort_keys=False, default_flow_style=False).rstrip())
    return "\n".join(lines) + "\n"


def from_values(
    get: Callable[[str], Any], *, hub_ip: str, overlay_cidr: str, **kw: Any
) -> ControlPlane:
    """Build the inputs from a profile's dotted-key getter (``prof.get``) plus the hub's values."""
    names: list[str] = []
    for key in ("wireguard.hub_endpoint", "enrollment.url"):
        raw = str(get(key) or "")
        host = raw.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        if host and host not in names:
            names.append(host)
    return ControlPlane(
        kubernetes_version=str(get("kubernetes.version")),
        hub_ip=hub_ip,
        overlay_cidr=overlay_cidr,
        pod_cidr=str(get("kubernetes.pod_cidr")),
        service_cidr=str(get("kubernetes.service_cidr")),
        public_names=tuple(names),
        interface=str(get("wireguard.interface") or "wg0"),
        mtu=int(get("wireguard.mtu") or 1420),
        **kw,
    )


def prepare(
    directory: Path, cp: ControlPlane, init_result: Mapping[str, str], *, force: bool = False
) -> dict[str, Any]:
    """``builder hub init`` for a new cluster: write DIR/kubeadm-init.yaml, return the plan.

    ``init_result`` is what ``pki.init_hub`` returned (config, ca_cert, ca_pin,
    hub_public_key).
    """
    path = write_config(directory, cp, force=force)
    return plan(
        cp,
        hub_dir=directory,
        config_path=Path(init_result["config"]),
        kubeadm_config=path,
        ca_cert=Path(init_result["ca_cert"]),
        ca_pin=init_result["ca_pin"],
        hub_public_key=init_result["hub_public_key"],
    )
