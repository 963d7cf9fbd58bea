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


# A recording test double for `kubeadm token create|delete`: prints what kubeadm prints on
# stdout for `token create` (the token alone on the last line) and logs its argv.
FAKE_KUBEADM = """#!/bin/sh
printf '%s\\n' "$*" >> "$0.argv"
if [ "$1 $2" = "token create" ]; then
  echo "[some warning line]"
  echo "${NF_FAKE_TOKEN:-abcdef.0123456789abcdef}"
fi
"""


@pytest.fixture
def kubeadm(tmp_path: Path) -> Path:
    path = tmp_path / "kubeadm"
    path.write_text(FAKE_KUBEADM)
    path.chmod(0o755)
    return path


def argv_log(kubeadm: Path) -> list[str]:
    return Path(f"{kubeadm}.argv").read_text().splitlines()


@pytest.mark.allow_subprocess
def test_kubeadm_mint_material_and_delete(kubeadm: Path) -> None:
    p = Provider(
        {
            "provider": "kubeadm",
            "kubeadm": str(kubeadm),
            "kubeconfig": "/etc/kubernetes/admin.conf",
            "ca_cert_hashes": ["sha256:" + "ab" * 32],
            "api_server": "10.100.0.1:6443",
            "cri_socket": "unix:///var/run/crio/crio.sock",
            "labels": {"site": "onprem"},
            "taints": [{"key": "k", "effect": "NoSchedule"}],
        }
    )
    m = p.material({"node_id": "n-1", "ip": "10.100.0.7"})
    assert m == {
        "api_server": "10.100.0.1:6443",
        "token": "abcdef.0123456789abcdef",
        "token_id": "abcdef",
        "ca_cert_hashes": ["sha256:" + "ab" * 32],
        "node_ip": "10.100.0.7",
        "node_name": "n-1",  # no hostname: the node id
        "cri_socket": "unix:///var/run/crio/crio.sock",
        "labels": {"site": "onprem"},
        "taints": [{"key": "k", "effect": "NoSchedule"}],
    }
    assert (
        p.material({"node_id": "n-2", "ip": "10.100.0.8", "hostname": "gpu-2"})["node_name"]
        == "gpu-2"
    )
    p.delete("abcdef")
    p.delete(None)  # nothing minted: nothing to delete
    assert argv_log(kubeadm) == [
        "token create --ttl 1h --description nodeforge n-1 --kubeconfig /etc/kubernetes/admin.conf",
        "token create --ttl 1h --description nodeforge n-2 --kubeconfig /etc/kubernetes/admin.conf",
        "token delete abcdef --kubeconfig /etc/kubernetes/admin.conf",
    ]


@pytest.mark.allow_subprocess
def test_kubeadm_ttl_and_no_kubeconfig(kubeadm: Path) -> None:
    p = Provider({"provider": "kubeadm", "kubeadm": str(kubeadm), "ttl": "15m"})
    assert p.mint("n") == ("abcdef.0123456789abcdef", "abcdef")
    p.delete("abcdef")
    assert argv_log(kubeadm) == [
        "token create --ttl 15m --description nodeforge n",
        "token delete abcdef",
    ]


@pytest.mark.allow_subprocess
@pytest.mark.parametrize("printed", ["", "ABCDEF.0123456789abcdef", "abcdef.0123"])
def test_kubeadm_printing_no_token_is_an_error(
    kubeadm: Path, monkeypatch: pytest.MonkeyPatch, printed: str
) -> None:
    monkeypatch.setenv("NF_FAKE_TOKEN", printed)
    if printed == "":
        kubeadm.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(BuilderError) as exc:
        Provider({"provider": "kubeadm", "kubeadm": str(kubeadm)}).mint("n")
    assert exc.value.message == "kubeadm token create printed no bootstrap token"


def test_static_provider_defaults_and_bad_token(tmp_path: Path) -> None:
    from builder.errors import UsageError

    p = Provider({"token": "abcdef.0123456789abcdef"})  # provider defaults to static
    assert p.kind == "static"
    assert p.mint("n") == ("abcdef.0123456789abcdef", None)
    assert p.ca_hashes() == []  # static without hashes: none, and no CA is read
    p.delete("abcdef")  # static: never runs kubeadm (a run would fail the unit lane)
    with pytest.raises(UsageError) as exc:
        Provider({"provider": "static", "token": "not-a-token"}).mint("n")
    assert exc.value.message.startswith("join.token: not a kubeadm bootstrap token")
    (tmp_path / "t").write_text("  abcdef.0123456789abcdef \n")
    rel = Provider({"token": "file:t", "_base": str(tmp_path)})
    assert rel.mint("n")[0] == "abcdef.0123456789abcdef"
    absolute = Provider({"token": f"file:{tmp_path / 't'}"})
    assert absolute.mint("n")[0] == "abcdef.0123456789abcdef"


def test_kubeadm_default_cluster_ca_path_and_cached_hash(tmp_path: Path) -> None:
    if Path("/etc/kubernetes/pki/ca.crt").exists():
        pytest.skip("a real cluster CA is present")
    with pytest.raises(BuilderError) as exc:
        Provider({"provider": "kubeadm"}).ca_hashes()
    assert "cannot read cluster CA /etc/kubernetes/pki/ca.crt" in exc.value.message
    ca = tmp_path / "ca.crt"
    ca.write_bytes(DEMO_CA.read_bytes())
    p = Provider({"provider": "kubeadm", "cluster_ca": str(ca)})
    assert p.ca_hashes() == [DEMO_CA_HASH]
    ca.unlink()  # read once: the hash is cached for the hub's life
    assert p.ca_hashes() == [DEMO_CA_HASH]
