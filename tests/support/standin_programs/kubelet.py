#!/usr/bin/python3
"""STAND-IN for the kubelet (package kubelet @VERSION@), built by nodeforge's test fixtures.

Started by systemd through kubelet.service + kubeadm's 10-kubeadm.conf + our drop-ins, it
reads what they pass (``--config``, ``--kubeconfig``, ``--bootstrap-kubeconfig``, the
``KUBELET_KUBEADM_ARGS`` kubeadm wrote, ``KUBELET_EXTRA_ARGS``) and exits 1, as the real
one does (UPSTREAM.md, "kubelet"), when:

- the ``--config`` file is missing or not a kubelet.config.k8s.io/v1beta1
  KubeletConfiguration;
- neither the kubeconfig nor the bootstrap kubeconfig it was given exists;
- the container runtime endpoint (flag, else ``containerRuntimeEndpoint`` in the config)
  does not answer.

The cgroup driver is not compared: since 1.34 the kubelet takes it from the CRI runtime
(KubeletCgroupDriverFromCRI, GA, locked on), so crio's ``cgroup_manager`` wins.
Otherwise it "bootstraps" (no API server here: it writes /etc/kubernetes/kubelet.conf from
the bootstrap kubeconfig, pointing at a stand-in client certificate) and serves
``/healthz`` on healthzBindAddress:healthzPort (127.0.0.1:10248) until stopped.
$NF_STANDIN_ROOT (default /) prefixes every path, for tests against a temporary root.
"""

from __future__ import annotations

import http.server
import os
import socket
import sys
import time

import yaml

VERSION = "@VERSION@"
ROOT = os.environ.get("NF_STANDIN_ROOT", "/")
LOG = "/var/log/nodeforge-standins.log"
DEFAULT_CRI = "unix:///run/containerd/containerd.sock"
CLIENT_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"


def p(path: str) -> str:
    return os.path.join(ROOT, path.lstrip("/"))


def log(msg: str) -> None:
    try:
        with open(p(LOG), "a") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f" kubelet {msg}\n")
    except OSError:
        pass


def fatal(msg: str) -> int:
    print(f'E kubelet] "command failed" err="{msg}"', file=sys.stderr)
    log(f"failed: {msg}")
    return 1


def flags(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    it = iter(argv)
    for a in it:
        if not a.startswith("--"):
            continue
        key, eq, val = a[2:].partition("=")
        out[key] = val if eq else next(it, "")
    return out


class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"ok" if self.path == "/healthz" else b"404 page not found"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["version"]):
        print(f"Kubernetes v{VERSION.split('-')[0]} (nodeforge stand-in kubelet {VERSION})")
        return 0
    log(" ".join(argv))
    f = flags(argv)
    config = f.get("config", "")
    if not config:
        return fatal("the stand-in kubelet needs --config (kubeadm's 10-kubeadm.conf passes it)")
    try:
        with open(p(config)) as fh:
            kc = yaml.safe_load(fh) or {}
    except OSError as exc:
        return fatal(f"failed to load kubelet config file, path: {config}, error: {exc}")
    except yaml.YAMLError as exc:
        return fatal(f"failed to load kubelet config file, path: {config}, error: {exc}")
    if (
        not isinstance(kc, dict)
        or kc.get("kind") != "KubeletConfiguration"
        or kc.get("apiVersion") != "kubelet.config.k8s.io/v1beta1"
    ):
        return fatal(f"failed to load kubelet config file, path: {config}, error: not a "
                     "kubelet.config.k8s.io/v1beta1 KubeletConfiguration")  # fmt: skip
    kubeconfig, bootstrap = f.get("kubeconfig", ""), f.get("bootstrap-kubeconfig", "")
    need_bootstrap = kubeconfig and not os.path.exists(p(kubeconfig))
    if need_bootstrap and (not bootstrap or not os.path.exists(p(bootstrap))):
        return fatal(f"failed to run Kubelet: unable to load bootstrap kubeconfig: stat "
                         f"{bootstrap}: no such file or directory")  # fmt: skip
    endpoint = (
        f.get("container-runtime-endpoint") or kc.get("containerRuntimeEndpoint") or DEFAULT_CRI
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(p(str(endpoint).removeprefix("unix://")))
    except OSError as exc:
        return fatal(f'validate service connection: validate CRI v1 runtime API for endpoint '
                     f'"{endpoint}": {exc}')  # fmt: skip
    if kubeconfig and not os.path.exists(p(kubeconfig)):  # the TLS bootstrap, stand-in
        with open(p(bootstrap)) as fh:
            boot = yaml.safe_load(fh)
        boot["users"] = [{"name": "default-auth", "user": {
            "client-certificate": CLIENT_CERT, "client-key": CLIENT_CERT}}]  # fmt: skip
        boot["contexts"] = [
            {
                "name": "default-context",
                "context": {"cluster": "kubernetes", "user": "default-auth"},
            }
        ]
        boot["current-context"] = "default-context"
        os.makedirs(os.path.dirname(p(CLIENT_CERT)), exist_ok=True)
        with open(p(CLIENT_CERT), "w") as fh:
            fh.write("STAND-IN: no API server signed a client certificate here\n")
        os.chmod(p(CLIENT_CERT), 0o600)
        tmp = p(kubeconfig) + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            yaml.safe_dump(boot, fh)
        os.replace(tmp, p(kubeconfig))
    addr = (str(kc.get("healthzBindAddress", "127.0.0.1")), int(kc.get("healthzPort", 10248)))
    server = http.server.HTTPServer(addr, Healthz)
    print(f"kubelet (stand-in) running, node-ip {f.get('node-ip', '-')}", flush=True)
    log(f"running, node-ip {f.get('node-ip', '-')}, cri {endpoint}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
