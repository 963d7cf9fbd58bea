"""Join material for ``GET /v1/join``: a bootstrap token and the cluster CA hash.

- ``kubeadm``: runs ``kubeadm token create --ttl 1h --description <node_id>`` on the
  control plane and hashes the cluster CA's public key (``sha256:<hex of the DER
  SubjectPublicKeyInfo>``, kubeadm's ``--discovery-token-ca-cert-hash``);
  ``delete`` runs ``kubeadm token delete <id>`` when the node reports completion.
- ``static``: a configured token and hash (labs); nothing to delete.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from builder.errors import BuilderError, UsageError
from builder.run import run

BOOTSTRAP_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


def ca_cert_hash(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _secret_value(v: str, base: Path) -> str:
    if v.startswith("file:"):
        p = Path(v[5:])
        p = p if p.is_absolute() else base / p
        return p.read_text().strip()
    return v


class Provider:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.kind = conf.get("provider", "static")
        self.base = Path(conf.get("_base", "."))
        self._ca_hashes: list[str] | None = None

    def ca_hashes(self) -> list[str]:
        if self._ca_hashes is None:
            hashes = list(self.conf.get("ca_cert_hashes") or [])
            if self.kind == "kubeadm" and not hashes:
                ca = Path(self.conf.get("cluster_ca", "/etc/kubernetes/pki/ca.crt"))
                try:
                    hashes = [ca_cert_hash(ca.read_bytes())]
                except (OSError, ValueError) as exc:
                    raise BuilderError(
                        f"join.cluster_ca: cannot read cluster CA {ca}: {exc}"
                    ) from exc
            self._ca_hashes = hashes
        return self._ca_hashes

    def mint(self, node_id: str) -> tuple[str, str | None]:
        """Return (bootstrap token, id to delete later or None)."""
        if self.kind == "static":
            token = _secret_value(str(self.conf.get("token") or ""), self.base)
            if not BOOTSTRAP_RE.match(token):
                raise UsageError(
                    "join.token: not a kubeadm bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})"
                )
            return token, None
        argv = [
            self.conf.get("kubeadm", "kubeadm"),
            "token",
            "create",
            "--ttl",
            str(self.conf.get("ttl", "1h")),
            "--description",
            f"nodeforge {node_id}",
        ]
        if self.conf.get("kubeconfig"):
            argv += ["--kubeconfig", str(self.conf["kubeconfig"])]
        out = run(argv, timeout=30).stdout.strip().splitlines()
        token = out[-1].strip() if out else ""
        m = BOOTSTRAP_RE.match(token)
        if not m:
            raise BuilderError("kubeadm token create printed no bootstrap token")
        return token, m.group(1)

    def delete(self, token_id: str | None) -> None:
        if self.kind != "kubeadm" or not token_id:
            return
        argv = [self.conf.get("kubeadm", "kubeadm"), "token", "delete", token_id]
        if self.conf.get("kubeconfig"):
            argv += ["--kubeconfig", str(self.conf["kubeconfig"])]
        run(argv, timeout=30)

    def material(self, node: dict[str, Any]) -> dict[str, Any]:
        token, tid = self.mint(node["node_id"])
        return {
            "api_server": self.conf.get("api_server"),
            "token": token,
            "token_id": tid,
            "ca_cert_hashes": self.ca_hashes(),
            "node_ip": node["ip"],
            "node_name": node.get("hostname") or node["node_id"],
            "cri_socket": self.conf.get("cri_socket"),
            "labels": dict(self.conf.get("labels") or {}),
            "taints": list(self.conf.get("taints") or []),
        }
