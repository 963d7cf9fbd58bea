"""The stand-in kubeadm and kubelet (tests/support/standin_programs/) behave like the real
ones where nodeforge relies on them (UPSTREAM.md, "kubeadm join" and "kubelet"), run as
programs against a temporary root: the JoinConfiguration is the one the node agent writes,
the CA pin the one the hub's provider computes, so a product bug in either fails here.

Expected values are independent: the pin of the stand-in cluster CA comes from openssl
(`x509 -pubkey | pkey -pubin -outform der | sha256sum`, kubeadm's documented recipe), the
messages and check names from kubeadm's sources (UPSTREAM.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.boottest.constants import STATIC_CA_HASH
from builder.hub import provider
from tests.support.ports import free_port
from tests.support.standins import (
    PROGRAMS,
    STANDIN_CLUSTER_CA,
    STANDIN_CLUSTER_DIR,
    STANDIN_KUBELET_CONFIG,
    register,
)

REG = register()
pytestmark = pytest.mark.allow_subprocess

# imported under its package name: mutmut's trampolines (make mutation) only switch
# to a mutant in a module named as its file path says (builder.node.agent)
agent = importlib.import_module("builder.node.agent")

TOKEN = "abcdef.0123456789abcdef"
SYSTEMCTL = """#!/bin/sh
# fake systemctl for a temporary root: records its calls; `restart kubelet` runs the stand-in
# kubelet the way kubelet.service + 10-kubeadm.conf would (kubeadm-flags.env sourced)
echo "$*" >>"$NF_STANDIN_ROOT/systemctl.log"
pidf="$NF_STANDIN_ROOT/kubelet.pid"
case "$*" in
  "stop kubelet") [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null; rm -f "$pidf" ;;
  "restart kubelet")
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null
    [ -n "$NF_FAKE_NO_KUBELET" ] && exit 1
    KUBELET_KUBEADM_ARGS=""
    . "$NF_STANDIN_ROOT/var/lib/kubelet/kubeadm-flags.env"
    "$NF_PYTHON" "$NF_KUBELET" --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \\
      --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml \\
      $KUBELET_KUBEADM_ARGS >>"$NF_STANDIN_ROOT/kubelet.out" 2>&1 &
    echo $! >"$pidf" ;;
esac
exit 0
"""


def openssl_pin(pem: Path) -> str:
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", pem],
                         capture_output=True, check=True).stdout  # fmt: skip
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                         capture_output=True, check=True).stdout  # fmt: skip
    return "sha256:" + hashlib.sha256(der).hexdigest()


class Node:
    """A temporary root with a CRI socket, sysctls, the stand-in cluster and fake systemctl."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "systemctl").write_text(SYSTEMCTL)
        (self.bin / "systemctl").chmod(0o755)
        self.put("/proc/sys/net/ipv4/ip_forward", "1\n")
        self.put("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
        self.put(f"{STANDIN_CLUSTER_DIR}/ca.crt", STANDIN_CLUSTER_CA.read_text())
        self.healthz = free_port()
        self.put(f"{STANDIN_CLUSTER_DIR}/kubelet-config.yaml",
                 STANDIN_KUBELET_CONFIG.replace("10248", str(self.healthz)))  # fmt: skip
        self.cri = self.root / "var/run/crio/crio.sock"
        self.cri.parent.mkdir(parents=True)
        self.cri_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.cri_listener.bind(str(self.cri))
        self.cri_listener.listen(16)
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "NF_STANDIN_ROOT": str(self.root),
            "NF_STANDIN_KUBELET_PORT": str(free_port()),
            "NF_STANDIN_KUBELET_TIMEOUT": "8",
            "NF_PYTHON": sys.executable,
            "NF_KUBELET": str(PROGRAMS / "kubelet.py"),
        }

    def put(self, path: str, text: str) -> Path:
        f = self.root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        return f

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def kubeadm(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(PROGRAMS / "kubeadm.py"), *args]
        return subprocess.run(argv, env={**self.env, **env}, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    def kubelet(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, str(PROGRAMS / "kubelet.py"), *args]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)

    def join(self, text: str, **env: str) -> subprocess.CompletedProcess[str]:
        cfg = self.put("/run/nodeforge/join.yaml", text)
        cfg.chmod(0o600)
        return self.kubeadm("join", "--config", str(cfg), **env)

    def systemctl_calls(self) -> list[str]:
        f = self.root / "systemctl.log"
        return f.read_text().splitlines() if f.exists() else []

    def close(self) -> None:
        pid = self.root / "kubelet.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid.read_text()), signal.SIGTERM)
        self.cri_listener.close()


@pytest.fixture
def node(tmp_path: Path):
    n = Node(tmp_path)
    yield n
    n.close()


def product_join_config(hashes: list[str] | None = None, **mat: object) -> str:
    """The JoinConfiguration the node agent writes from the hub's join material."""
    pem = STANDIN_CLUSTER_CA.read_bytes()
    material = {
        "api_server": "10.200.0.1:6443",
        "token": TOKEN,
        "ca_cert_hashes": hashes if hashes is not None else [provider.ca_cert_hash(pem)],
        "cri_socket": "unix:///var/run/crio/crio.sock",
        "labels": {"site": "lab"},
        "taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}],
        **mat,
    }
    cfg = agent.Config(site="lab", enroll_url="https://hub", ca_file="ca", token_file="t")
    return str(agent.join_configuration(material, cfg, "10.99.0.7", "node-a"))


def test_the_stand_in_cluster_ca_pin_is_the_boot_labs() -> None:
    # the boot lab's static provider hands out STATIC_CA_HASH; openssl says it pins this CA
    assert openssl_pin(STANDIN_CLUSTER_CA) == STATIC_CA_HASH
    assert provider.ca_cert_hash(STANDIN_CLUSTER_CA.read_bytes()) == STATIC_CA_HASH


def test_join_writes_the_kubelet_files_and_restarts_it_through_systemctl(node: Node) -> None:
    r = node.join(product_join_config())
    assert r.returncode == 0, r.stderr + r.stdout
    assert "This node has joined the cluster" in r.stdout
    # kubeadm's order: stop, write, daemon-reload, restart (PATH lookup: our fake)
    assert node.systemctl_calls() == ["stop kubelet", "daemon-reload", "restart kubelet"]
    assert yaml.safe_load(node.file("/var/lib/kubelet/config.yaml").read_text())["kind"] == (
        "KubeletConfiguration"
    )
    flags = node.file("/var/lib/kubelet/kubeadm-flags.env").read_text()
    assert "--node-ip=10.99.0.7" in flags and "--node-labels=site=lab" in flags
    assert "--register-with-taints=gpu=true:NoSchedule" in flags
    assert node.file("/etc/kubernetes/pki/ca.crt").read_text() == STANDIN_CLUSTER_CA.read_text()


def test_join_passes_the_cri_endpoint_through_the_instance_config(node: Node) -> None:
    # kubeadm 1.35 (NodeLocalCRISocket beta, on by default): the node's criSocket goes to
    # /var/lib/kubelet/instance-config.yaml, patched into config.yaml; no flag (UPSTREAM.md)
    k = REG["kubernetes"]
    r = node.join(product_join_config())
    assert r.returncode == 0, r.stderr + r.stdout
    flags = node.file("/var/lib/kubelet/kubeadm-flags.env").read_text()
    assert "--container-runtime-endpoint" not in flags
    instance = yaml.safe_load(node.file(k["kubelet_instance_config"]).read_text())
    assert instance == {"containerRuntimeEndpoint": REG["crio"]["socket"]}
    config = yaml.safe_load(node.file("/var/lib/kubelet/config.yaml").read_text())
    assert config["containerRuntimeEndpoint"] == REG["crio"]["socket"]
    assert config["kind"] == "KubeletConfiguration"
    # and reset removes it with the rest
    assert node.kubeadm("reset", "-f").returncode == 0
    assert not node.file(k["kubelet_instance_config"]).exists()


def test_join_ends_with_the_kubelets_tls_bootstrap(node: Node) -> None:
    assert node.join(product_join_config()).returncode == 0
    kubelet_conf = node.file("/etc/kubernetes/kubelet.conf")  # the kubelet's TLS bootstrap
    assert kubelet_conf.exists() and (kubelet_conf.stat().st_mode & 0o777) == 0o600
    assert not node.file("/etc/kubernetes/bootstrap-kubelet.conf").exists()  # removed after


def test_hub_provider_hashing_the_pem_is_refused(node: Node) -> None:
    # the bug finding 3 named: the hash of the PEM text instead of the SubjectPublicKeyInfo
    pem = STANDIN_CLUSTER_CA.read_bytes()
    wrong = "sha256:" + hashlib.sha256(pem).hexdigest()
    r = node.join(product_join_config([wrong]))
    assert r.returncode == 1
    assert f'none of the public keys "{STATIC_CA_HASH}" are pinned' in r.stderr
    assert node.systemctl_calls() == []  # nothing started
    assert not node.file("/var/lib/kubelet/config.yaml").exists()


def test_a_field_typo_is_only_a_warning_but_what_it_drops_is_refused(node: Node) -> None:
    # kubeadm join logs unknown fields (strict decoding is a warning) and then validates
    # what it understood: a misspelt caCertHashes leaves discovery without a pin
    text = product_join_config().replace("caCertHashes:", "caCertHash:")
    r = node.join(text)
    assert r.returncode == 1
    assert 'unknown field "discovery.bootstrapToken.caCertHash"' in r.stderr
    assert "using token-based discovery without caCertHashes can be unsafe" in r.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta2", "old or unknown API spec"),
        ("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta9", 'no kind "JoinConfiguration"'),
        ("kind: JoinConfiguration", "kind: JoinConfig", "no JoinConfiguration found"),
        ("  taints:\n", "  taints: 3\n  x:\n", "cannot unmarshal int into an array"),
        (f'"{TOKEN}"', '"not-a-token"', "the bootstrap token is invalid"),
        ('"10.200.0.1:6443"', '"10.200.0.1"', "apiServerEndpoint: Invalid value"),
    ],
)
def test_what_join_refuses_in_the_config(node: Node, old: str, new: str, message: str) -> None:
    text = product_join_config()
    assert old in text
    r = node.join(text.replace(old, new, 1))
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert node.systemctl_calls() == []


def test_deprecated_v1beta3_is_a_warning(node: Node) -> None:
    text = product_join_config().replace("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3")
    r = node.join(text)
    assert "deprecated API spec" in r.stderr
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("setup", "check"),
    [
        ("ip_forward", "[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: "
                       "/proc/sys/net/ipv4/ip_forward contents are not set to 1"),
        ("no_cri", "[ERROR CRI]: container runtime is not running"),
        ("kubelet_conf", "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: "
                         "/etc/kubernetes/kubelet.conf already exists"),
    ],
)  # fmt: skip
def test_preflight_errors(node: Node, setup: str, check: str) -> None:
    if setup == "ip_forward":
        node.put("/proc/sys/net/ipv4/ip_forward", "0\n")
    elif setup == "no_cri":
        node.cri_listener.close()
        node.cri.unlink()
    else:
        node.put("/etc/kubernetes/kubelet.conf", "old\n")
    r = node.join(product_join_config())
    assert r.returncode == 1
    assert check in r.stderr and "preflight checks failed" in r.stderr
    assert node.systemctl_calls() == []


def test_swap_is_a_warning_and_ignore_preflight_errors_downgrades(node: Node) -> None:
    node.put("/proc/swaps", "Filename\tType\n/swapfile\tfile\t1024\t0\t-2\n")
    node.put("/proc/sys/net/ipv4/ip_forward", "0\n")
    text = product_join_config().replace(
        "  kubeletExtraArgs:",
        '  ignorePreflightErrors: ["FileContent--proc-sys-net-ipv4-ip_forward"]\n'
        "  kubeletExtraArgs:",
    )
    r = node.join(text)
    assert "[WARNING Swap]" in r.stderr
    assert "[WARNING FileContent--proc-sys-net-ipv4-ip_forward]" in r.stderr
    assert r.returncode == 0, r.stderr


def test_join_fails_when_the_kubelet_does_not_come_up(node: Node) -> None:
    # systemctl restart kubelet fails (kubeadm only warns) -> the healthz wait decides
    r = node.join(product_join_config(), NF_FAKE_NO_KUBELET="1", NF_STANDIN_KUBELET_TIMEOUT="2")
    assert r.returncode == 1
    assert "The kubelet is not healthy" in r.stdout
    assert "restart kubelet" in node.systemctl_calls()


def test_reset_removes_what_join_wrote(node: Node) -> None:
    assert node.join(product_join_config()).returncode == 0
    r = node.kubeadm("reset", "-f")
    assert r.returncode == 0
    for f in ("/etc/kubernetes/kubelet.conf", "/var/lib/kubelet/config.yaml",
              "/var/lib/kubelet/kubeadm-flags.env", "/etc/kubernetes/pki/ca.crt"):  # fmt: skip
        assert not node.file(f).exists(), f
    assert node.systemctl_calls()[-1] == "stop kubelet"


# -- the kubelet ----------------------------------------------------------------------------
KUBELET_ARGS = (
    "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
    "--kubeconfig=/etc/kubernetes/kubelet.conf",
    "--config=/var/lib/kubelet/config.yaml",
)


def test_kubelet_without_its_config_exits_1(node: Node) -> None:
    # what the kubelet does before kubeadm join (our drop-in keeps it from starting then)
    r = node.kubelet(*KUBELET_ARGS)
    assert r.returncode == 1
    assert "failed to load kubelet config file, path: /var/lib/kubelet/config.yaml" in r.stderr


def test_kubelet_refuses_a_config_of_another_kind(node: Node) -> None:
    node.put("/var/lib/kubelet/config.yaml", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: X\n")
    r = node.kubelet(*KUBELET_ARGS)
    assert r.returncode == 1 and "KubeletConfiguration" in r.stderr


def test_kubelet_without_bootstrap_kubeconfig_exits_1(node: Node) -> None:
    node.put("/var/lib/kubelet/config.yaml", STANDIN_KUBELET_CONFIG)
    r = node.kubelet(*KUBELET_ARGS, "--container-runtime-endpoint=unix:///var/run/crio/crio.sock")
    assert r.returncode == 1 and "unable to load bootstrap kubeconfig" in r.stderr


def test_kubelet_without_a_runtime_endpoint_it_can_reach_exits_1(node: Node) -> None:
    # no --container-runtime-endpoint: the kubelet's default (containerd) is not there
    node.put("/var/lib/kubelet/config.yaml", STANDIN_KUBELET_CONFIG)
    node.put("/etc/kubernetes/bootstrap-kubelet.conf", "apiVersion: v1\nkind: Config\n")
    r = node.kubelet(*KUBELET_ARGS)
    assert r.returncode == 1
    assert 'validate CRI v1 runtime API for endpoint "unix:///run/containerd' in r.stderr


def test_crio_daemon_answers_on_its_cri_socket(tmp_path: Path) -> None:
    # kubeadm's CRI preflight check and the kubelet connect to [crio.api] listen
    conf = tmp_path / "crio.conf.d"
    conf.mkdir()
    sock = tmp_path / "run" / "crio.sock"
    (conf / "10-crio.conf").write_text(
        f'[crio.api]\nlisten = "{sock}"\n\n[crio.runtime]\ndefault_runtime = "sh"\n\n'
        '[crio.runtime.runtimes.sh]\nruntime_path = "/bin/sh"\nmonitor_path = "/bin/sh"\n'
    )
    argv = [sys.executable, str(PROGRAMS / "crio.py"), "--config", "", "--config-dir", str(conf)]
    env = {**os.environ, "NODEFORGE_STANDIN_LOG": str(tmp_path / "log")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "config ok" in proc.stdout.readline()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
