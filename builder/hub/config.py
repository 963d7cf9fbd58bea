"""The hub's settings: ``hub.json`` written by ``builder hub init`` and read by every command.

``DEFAULTS`` is the one home of the hub's default settings: ``load`` fills every key a
``hub.json`` leaves out from it, ``pki.init_hub`` names its files after it, and
``init_settings`` derives what a site profile fixes (endpoint, URL, overlay, MTU, …) so a hub
made with ``--site`` and the nodes of that site agree. The overlay default is the one in
``profiles/base.yaml``.

Relative paths are resolved against the directory holding the file. Every problem is
reported as ``<file>: <key>: <message>`` (ValidationError, exit 2).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from builder.errors import UsageError, ValidationError

DEFAULT_CONFIG = Path("/etc/nodeforge-hub/hub.json")
ENV_CONFIG = "NODEFORGE_HUB_CONFIG"

DEFAULTS: dict[str, Any] = {
    "listen": "0.0.0.0:8443",
    "url": "https://hub.example.com:8443",
    "tls_cert": "server.pem",
    "tls_key": "server.key",
    "ca_cert": "ca.pem",
    "database": "hub.db",
    "secret_key_file": "secret.key",
    "quarantine_seconds": 86400,
    "reconcile_seconds": 30,
    "pending_retry_seconds": 30,
    "wireguard": {
        "interface": "wg0",
        "private_key_file": "wg.key",
        "listen_port": 51820,
        "endpoint": "hub.example.com:51820",
        "overlay_cidr": "10.200.0.0/16",  # = profiles/base.yaml wireguard.overlay_cidr
        "hub_overlay_ip": None,  # None: the first host of overlay_cidr
        "mtu": 1420,
        "keepalive": 25,
        "reserved": [],
        "create_interface": True,
        "apply": True,
        # route node <-> node traffic through the hub: ip_forward + a FORWARD accept for the
        # interface where the chain drops by default (builder.hub.routing), at every start
        "forward": True,
    },
    "limits": {
        "per_ip_rate": 5.0,
        "per_ip_burst": 30,
        "per_token_rate": 50.0,
        "per_token_burst": 500,
        "max_body_bytes": 4096,
        "batch_max": 256,
        "request_timeout": 10,  # whole request: TLS handshake, headers and body
        "writer_process": True,
        "max_connections": 4096,  # all connections (normal load: a few dozen)
        "per_source_connections": 64,  # open connections per client address (a NAT: many nodes)
        "max_header_bytes": 8192,
        "keepalive_seconds": 5,
        "failed_auth_rate": 1.0,  # site-wide budget of failed authentications, per second
        "failed_auth_burst": 100,
        "replay_grace_seconds": 300,
    },
    # where the hub's state lives: {"kind": "sqlite"} (the file `database`) or
    # {"kind": "etcd", "endpoints": ["https://10.0.0.1:2379"], "tls": {"ca", "cert", "key"},
    #  "prefix": "/nodeforge/hub", "name": "<this hub>"} (builder.hub.stores.etcd)
    "store": {"kind": "sqlite"},
    "join": {
        "provider": "static",
        "api_server": None,  # None: <hub overlay address>:6443
        "token": None,
        "ca_cert_hashes": [],
        "kubeadm": "kubeadm",
        "kubeconfig": "/etc/kubernetes/admin.conf",
        "cluster_ca": "/etc/kubernetes/pki/ca.crt",
        "ttl": "1h",
        "cri_socket": "unix:///var/run/crio/crio.sock",
        "labels": {},
        "taints": [],
    },
}


@dataclass(frozen=True)
class WireGuard:
    interface: str
    private_key_file: Path
    listen_port: int
    endpoint: str
    network: ipaddress.IPv4Network
    hub_ip: ipaddress.IPv4Address
    mtu: int
    keepalive: int
    reserved: frozenset[ipaddress.IPv4Address]
    create_interface: bool
    apply: bool
    forward: bool


@dataclass(frozen=True)
class Limits:
    per_ip_rate: float
    per_ip_burst: float
    per_token_rate: float
    per_token_burst: float
    max_body_bytes: int
    batch_max: int
    request_timeout: float
    writer_process: bool
    max_connections: int
    per_source_connections: int
    max_header_bytes: int
    keepalive_seconds: float
    failed_auth_rate: float
    failed_auth_burst: float
    replay_grace_seconds: float


@dataclass(frozen=True)
class StoreConfig:
    kind: str = "sqlite"
    endpoints: tuple[str, ...] = ()
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    prefix: str = "/nodeforge/hub"
    name: str = ""  # this hub's name in the store (default: the host name)


@dataclass(frozen=True)
class HubConfig:
    path: Path
    listen_host: str
    listen_port: int
    url: str
    tls_cert: Path
    tls_key: Path
    ca_cert: Path
    database: Path
    secret_key_file: Path
    quarantine_seconds: int
    reconcile_seconds: float
    pending_retry_seconds: float
    wg: WireGuard
    limits: Limits
    join: dict[str, Any] = field(default_factory=dict)
    store: StoreConfig = field(default_factory=StoreConfig)

    @property
    def join_url(self) -> str:
        return f"https://{self.wg.hub_ip}:{self.listen_port}/v1/join"

    def secret_key(self) -> bytes:
        try:
            key = self.secret_key_file.read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"{self.path}: secret_key_file: cannot read {exc.filename}") from exc
        if len(key) < 32:
            raise UsageError(f"{self.secret_key_file}: hub secret key is too short")
        return key


def config_path(given: str | os.PathLike[str] | None) -> Path:
    if given:
        return Path(given)
    return Path(os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load(path: str | os.PathLike[str] | None = None) -> HubConfig:
    p = config_path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise UsageError(
            f"{p}: hub config not found", hint="create one with `builder hub init DIR`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"{p}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise UsageError(f"{p}: top level must be a mapping")
    return parse(raw, p)


def parse(raw: dict[str, Any], p: Path) -> HubConfig:
    d = _merge(DEFAULTS, raw)
    problems: list[str] = []
    base = p.parent

    def bad(key: str, msg: str) -> None:
        problems.append(f"{p}: {key}: {msg}")

    def path_of(v: Any, key: str) -> Path:
        if not isinstance(v, str) or not v:
            bad(key, "must be a path")
            return Path("/nonexistent")
        q = Path(v)
        return q if q.is_absolute() else base / q

    def num(v: Any, key: str, lo: float = 0) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < lo:
            bad(key, f"must be a number >= {lo}")
            return lo
        return float(v)

    host, _, port = str(d["listen"]).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        bad("listen", f"{d['listen']!r} is not HOST:PORT")
        port = "8443"
    w = d["wireguard"]
    net = hub_ip = None
    try:
        net = ipaddress.IPv4Network(w["overlay_cidr"], strict=True)
        if net.prefixlen > 30:
            bad("wireguard.overlay_cidr", "needs at least a /30")
    except (ValueError, TypeError) as exc:
        bad("wireguard.overlay_cidr", f"{w['overlay_cidr']!r}: {exc}")
    try:
        if w["hub_overlay_ip"] is None:
            hub_ip = next(net.hosts()) if net else None
        else:
            hub_ip = ipaddress.IPv4Address(w["hub_overlay_ip"])
        if hub_ip and net and hub_ip not in net:
            bad("wireguard.hub_overlay_ip", f"{hub_ip} is not inside {net}")
    except (ValueError, TypeError) as exc:
        bad("wireguard.hub_overlay_ip", str(exc))
    reserved: set[ipaddress.IPv4Address] = set()
    for i, r in enumerate(w.get("reserved") or []):
        try:
            reserved.add(ipaddress.IPv4Address(r))
        except ValueError as exc:
            bad(f"wireguard.reserved[{i}]", str(exc))
    iface = str(w["interface"])
    if not 0 < len(iface) <= 15 or "/" in iface or " " in iface:
        bad("wireguard.interface", f"{iface!r} is not an interface name")
    if ":" not in str(w["endpoint"]):
        bad("wireguard.endpoint", f"{w['endpoint']!r} is not HOST:PORT")
    j = d["join"]
    if j.get("provider") not in ("static", "kubeadm"):
        bad("join.provider", f"{j.get('provider')!r}: must be static or kubeadm")
    if j.get("provider") == "static" and not j.get("token"):
        bad("join.token", "the static provider needs a bootstrap token (or file:PATH)")
    lim = d["limits"]
    limits = Limits(
        per_ip_rate=num(lim["per_ip_rate"], "limits.per_ip_rate"),
        per_ip_burst=num(lim["per_ip_burst"], "limits.per_ip_burst", 1),
        per_token_rate=num(lim["per_token_rate"], "limits.per_token_rate"),
        per_token_burst=num(lim["per_token_burst"], "limits.per_token_burst", 1),
        max_body_bytes=int(num(lim["max_body_bytes"], "limits.max_body_bytes", 256)),
        batch_max=int(num(lim["batch_max"], "limits.batch_max", 1)),
        request_timeout=num(lim["request_timeout"], "limits.request_timeout", 1),
        writer_process=bool(lim["writer_process"]),
        max_connections=int(num(lim["max_connections"], "limits.max_connections", 1)),
        per_source_connections=int(
            num(lim["per_source_connections"], "limits.per_source_connections", 1)
        ),
        max_header_bytes=int(num(lim["max_header_bytes"], "limits.max_header_bytes", 1024)),
        keepalive_seconds=num(lim["keepalive_seconds"], "limits.keepalive_seconds"),
        failed_auth_rate=num(lim["failed_auth_rate"], "limits.failed_auth_rate"),
        failed_auth_burst=num(lim["failed_auth_burst"], "limits.failed_auth_burst", 1),
        replay_grace_seconds=num(lim["replay_grace_seconds"], "limits.replay_grace_seconds"),
    )
    wg = WireGuard(
        interface=iface,
        private_key_file=path_of(w["private_key_file"], "wireguard.private_key_file"),
        listen_port=int(num(w["listen_port"], "wireguard.listen_port", 1)),
        endpoint=str(w["endpoint"]),
        network=net or ipaddress.IPv4Network(DEFAULTS["wireguard"]["overlay_cidr"]),
        hub_ip=hub_ip or ipaddress.IPv4Address(0),
        mtu=int(num(w["mtu"], "wireguard.mtu", 1280)),
        keepalive=int(num(w["keepalive"], "wireguard.keepalive")),
        reserved=frozenset(reserved),
        create_interface=bool(w["create_interface"]),
        apply=bool(w["apply"]),
        forward=bool(w["forward"]),
    )
    st = d["store"] if isinstance(d["store"], dict) else {}
    if not isinstance(d["store"], dict) or st.get("kind") not in ("sqlite", "etcd"):
        bad("store.kind", f"{st.get('kind')!r}: must be sqlite or etcd")
    eps = st.get("endpoints") or []
    if st.get("kind") == "etcd" and (
        not isinstance(eps, list)
        or not eps
        or not all(isinstance(e, str) and e.startswith(("http://", "https://")) for e in eps)
    ):
        bad("store.endpoints", "etcd needs a list of http(s)://HOST:PORT client URLs")
        eps = []
    tls = st.get("tls") or {}
    if not isinstance(tls, dict):
        bad("store.tls", "must be a mapping with ca, cert, key")
        tls = {}
    prefix = st.get("prefix", "/nodeforge/hub")
    if not isinstance(prefix, str) or not prefix or "\0" in prefix:
        bad("store.prefix", "must be a non-empty string")
        prefix = "/nodeforge/hub"
    store = StoreConfig(
        kind=str(st.get("kind")),
        endpoints=tuple(eps),
        ca=path_of(tls["ca"], "store.tls.ca") if tls.get("ca") else None,
        cert=path_of(tls["cert"], "store.tls.cert") if tls.get("cert") else None,
        key=path_of(tls["key"], "store.tls.key") if tls.get("key") else None,
        prefix=prefix.rstrip("/"),
        name=str(st.get("name") or socket.gethostname()),
    )
    cfg = HubConfig(
        path=p,
        listen_host=host,
        listen_port=int(port),
        url=str(d["url"]),
        tls_cert=path_of(d["tls_cert"], "tls_cert"),
        tls_key=path_of(d["tls_key"], "tls_key"),
        ca_cert=path_of(d["ca_cert"], "ca_cert"),
        database=path_of(d["database"], "database"),
        secret_key_file=path_of(d["secret_key_file"], "secret_key_file"),
        quarantine_seconds=int(num(d["quarantine_seconds"], "quarantine_seconds")),
        reconcile_seconds=num(d["reconcile_seconds"], "reconcile_seconds"),
        pending_retry_seconds=num(d["pending_retry_seconds"], "pending_retry_seconds", 1),
        wg=wg,
        limits=limits,
        store=store,
        join={**j, "api_server": j.get("api_server") or f"{wg.hub_ip}:6443", "_base": str(base)},
    )
    if problems:
        raise ValidationError(problems)
    return cfg


def _hub_ip_of(overlay_cidr: str) -> str:
    try:
        return str(next(ipaddress.IPv4Network(overlay_cidr, strict=True).hosts()))
    except (ValueError, StopIteration) as exc:
        raise UsageError(f"--overlay-cidr: {overlay_cidr!r}: {exc}") from exc


class _Profile(Protocol):
    """What ``init_settings`` needs of a site profile: ``get("a.b")`` (builder.site's Profile)."""

    def get(self, key: str, default: Any = None) -> Any: ...


def init_settings(
    profile: _Profile | None = None,
    *,
    endpoint: str | None = None,
    url: str | None = None,
    overlay_cidr: str | None = None,
    hub_ip: str | None = None,
    listen: str | None = None,
) -> dict[str, Any]:
    """The settings ``builder hub init`` writes: DEFAULTS < the site profile < explicit
    options. Returns ``{endpoint, url, overlay_cidr, hub_ip, listen, wireguard}``."""
    wg_d = DEFAULTS["wireguard"]
    got: dict[str, Any] = {
        "endpoint": None,
        "url": None,
        "overlay_cidr": wg_d["overlay_cidr"],
        "hub_ip": None,
        "wireguard": {},
    }
    if profile is not None:
        for key, path in (
            ("endpoint", "wireguard.hub_endpoint"),
            ("url", "enrollment.url"),
            ("overlay_cidr", "wireguard.overlay_cidr"),
            ("hub_ip", "wireguard.hub_overlay_ip"),
        ):
            v = profile.get(path)
            if v is not None:
                got[key] = str(v)
        for k in ("mtu", "keepalive", "interface"):
            v = profile.get(f"wireguard.{k}")
            if v is not None:
                got["wireguard"][k] = v
    for key, v in (
        ("endpoint", endpoint),
        ("url", url),
        ("overlay_cidr", overlay_cidr),
        ("hub_ip", hub_ip),
    ):
        if v:
            got[key] = v
    if not got["endpoint"] or not got["url"]:
        raise UsageError("--endpoint and --url are required (or --site to read them)")
    got["hub_ip"] = got["hub_ip"] or _hub_ip_of(got["overlay_cidr"])
    port = str(got["url"]).rsplit(":", 1)[-1].split("/")[0]
    host = DEFAULTS["listen"].rsplit(":", 1)[0]
    got["listen"] = listen or f"{host}:{port if port.isdigit() else 8443}"
    return got
