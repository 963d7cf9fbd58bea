"""``builder hub init``: a CA, a server certificate, a WireGuard key and hub.json.

ECDSA P-256 keys (fast TLS handshakes). The CA pin printed for profiles is
``sha256:<hex of the DER CA certificate>`` (what the node agent checks before trusting
the CA file baked into the image).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.errors import UsageError
from builder.fsutil import atomic_write

from .config import DEFAULTS, init_settings


def wg_keypair() -> tuple[str, str]:
    """A WireGuard (X25519) key pair as base64 strings, like ``wg genkey | wg pubkey``."""
    raw = bytearray(secrets.token_bytes(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    priv = x25519.X25519PrivateKey.from_private_bytes(bytes(raw))
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(bytes(raw)).decode(), base64.b64encode(pub).decode()


def wg_public_key(private_b64: str) -> str:
    priv = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def ca_pin(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca_and_server(names: list[str], days: int = 3650) -> tuple[bytes, bytes, bytes, bytes]:
    """Return (ca_pem, ca_key_pem, server_pem, server_key_pem); ``names`` = DNS names / IPs."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nodeforge hub CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), _key_pem(ca_key), srv.public_bytes(pem), _key_pem(srv_key)


def init_hub(
    directory: Path,
    *,
    endpoint: str | None = None,
    url: str | None = None,
    overlay_cidr: str | None = None,
    hub_ip: str | None = None,
    listen: str = "",
    extra_names: list[str] | None = None,
    force: bool = False,
    wireguard: dict[str, object] | None = None,
    profile: Any = None,
) -> dict[str, str]:
    """Create DIR/{hub.json, ca.pem, ca.key, server.pem, server.key, wg.key, secret.key}.

    Settings: ``config.DEFAULTS`` < the site ``profile`` (when given) < the arguments;
    hub.json records the settings a hub needs to agree with its site, the rest stays
    at the defaults ``config.load`` fills in."""
    s = init_settings(
        profile,
        endpoint=endpoint,
        url=url,
        overlay_cidr=overlay_cidr,
        hub_ip=hub_ip,
        listen=listen,
    )
    try:
        net = ipaddress.IPv4Network(s["overlay_cidr"], strict=True)
        hip = ipaddress.IPv4Address(s["hub_ip"])
    except ValueError as exc:
        raise UsageError(f"--overlay-cidr/--hub-ip: {exc}") from exc
    if hip not in net:
        raise UsageError(f"--hub-ip: {hip} is not inside {net}")
    endpoint, url = str(s["endpoint"]), str(s["url"])
    ep_host, _, ep_port = endpoint.rpartition(":")
    if not ep_host or not ep_port.isdigit():
        raise UsageError(f"--endpoint: {endpoint!r} is not HOST:PORT")
    cfg_path = directory / "hub.json"
    if cfg_path.exists() and not force:
        raise UsageError(f"{cfg_path}: already exists", hint="pass --force to replace it")
    url_host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    names: list[str] = []
    for n in [url_host, ep_host.strip("[]"), str(hip), *(extra_names or [])]:
        if n and n not in names:
            names.append(n)
    ca_pem, ca_key, srv_pem, srv_key = make_ca_and_server(names)
    wg_priv, wg_pub = wg_keypair()
    d = DEFAULTS
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    atomic_write(directory / d["ca_cert"], ca_pem, 0o644)
    atomic_write(directory / "ca.key", ca_key, 0o600)
    atomic_write(directory / d["tls_cert"], srv_pem + ca_pem, 0o644)
    atomic_write(directory / d["tls_key"], srv_key, 0o600)
    atomic_write(directory / d["wireguard"]["private_key_file"], wg_priv + "\n", 0o600)
    atomic_write(directory / d["secret_key_file"], secrets.token_hex(32) + "\n", 0o600)
    cfg = {
        "listen": s["listen"],
        "url": url,
        "wireguard": {
            "listen_port": int(ep_port),
            "endpoint": endpoint,
            "overlay_cidr": str(net),
            "hub_overlay_ip": str(hip),
            **s["wireguard"],
            **(wireguard or {}),
        },
        "join": {"provider": "kubeadm"},
    }
    atomic_write(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n", 0o600)
    return {
        "config": str(cfg_path),
        "ca_cert": str(directory / d["ca_cert"]),
        "ca_pin": ca_pin(ca_pem),
        "hub_public_key": wg_pub,
    }
