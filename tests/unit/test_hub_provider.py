"""The kubeadm discovery CA hash (issue 18 finding 3) against an independent computation.

kubeadm's ``--discovery-token-ca-cert-hash`` is ``sha256:`` + hex SHA-256 of the CA
certificate's DER-encoded SubjectPublicKeyInfo (kubernetes/kubernetes
cmd/kubeadm/app/util/pubkeypin/pubkeypin.go @04791b49, recorded in /work/research/crio-k8s.md
on 2026-11-30: ``certificate.RawSubjectPublicKeyInfo``). The same bytes come out
of ``openssl x509 -pubkey -noout | openssl pkey -pubin -outform der``; hashing the PEM,
the whole certificate or the bare key must fail here.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.hub.provider import Provider, ca_cert_hash

REPO = Path(__file__).resolve().parents[2]
DEMO_CA = REPO / "profiles" / "demo-hub-ca.pem"
# `openssl x509 -in profiles/demo-hub-ca.pem -pubkey -noout | openssl pkey -pubin -outform der
#  | sha256sum` (OpenSSL 3, 2026-11-30)
DEMO_CA_HASH = "sha256:2a5e3de269b2a903e2687f7ec005264cc6a62a23ad54f398ec91f9fd07f9ed7d"


def openssl_spki_hash(pem: Path) -> str:
    pub = subprocess.run(
        ["openssl", "x509", "-in", str(pem), "-pubkey", "-noout"],
        check=True,
        capture_output=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=pub,
        check=True,
        capture_output=True,
    ).stdout
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_hash_of_a_fixed_ca_is_the_openssl_literal() -> None:
    assert ca_cert_hash(DEMO_CA.read_bytes()) == DEMO_CA_HASH


@pytest.mark.allow_subprocess
@pytest.mark.parametrize(
    "keyopt",
    [
        ["-newkey", "rsa:2048"],
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        ["-newkey", "ed25519"],
    ],
    ids=["rsa", "ecdsa", "ed25519"],
)
def test_hash_matches_openssl_for_fresh_cas(tmp_path: Path, keyopt: list[str]) -> None:
    pem = tmp_path / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", *keyopt, "-nodes", "-keyout", str(tmp_path / "ca.key")]
        + ["-out", str(pem), "-days", "1", "-subj", "/CN=kubernetes"],
        check=True,
        capture_output=True,
    )
    expected = openssl_spki_hash(pem)
    assert ca_cert_hash(pem.read_bytes()) == expected
    # the kubeadm provider reads the cluster CA itself when no hash is configured
    provider = Provider({"provider": "kubeadm", "cluster_ca": str(pem)})
    assert provider.ca_hashes() == [expected]


def test_not_the_pem_nor_the_whole_certificate() -> None:
    import ssl

    pem = DEMO_CA.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    h = ca_cert_hash(pem)
    assert h != "sha256:" + hashlib.sha256(pem).hexdigest()
    assert h != "sha256:" + hashlib.sha256(der).hexdigest()


def test_configured_hashes_win_and_unreadable_ca_is_named(tmp_path: Path) -> None:
    assert Provider({"provider": "kubeadm", "ca_cert_hashes": ["sha256:ab"]}).ca_hashes() == [
        "sha256:ab"
    ]
    missing = tmp_path / "nope.crt"
    with pytest.raises(BuilderError) as exc:
        Provider({"provider": "kubeadm", "cluster_ca": str(missing)}).ca_hashes()
    assert f"join.cluster_ca: cannot read cluster CA {missing}" in exc.value.message
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    with pytest.raises(BuilderError):
        Provider({"provider": "kubeadm", "cluster_ca": str(tmp_path / "junk.crt")}).ca_hashes()
