#!/usr/bin/python3
"""STAND-IN for kubeadm (package kubeadm @VERSION@), built by nodeforge's test fixtures.

``kubeadm join --config FILE`` as far as nodeforge relies on it (UPSTREAM.md, "kubeadm
join"); no API server is reachable, so the control plane's side is read from the stand-in
cluster data the package ships (CLUSTER_DIR: ``ca.crt`` = the CA in the cluster-info
ConfigMap, ``kubelet-config.yaml`` = the kubelet-config ConfigMap):

1. config: the YAML documents; the JoinConfiguration's apiVersion must be a known
   kubeadm.k8s.io version (v1beta4; v1beta3 deprecated: a warning; older: an error);
   unknown fields are a WARNING (kubeadm's strict decoding result is only logged), a
   wrong type is an error; then validation: apiServerEndpoint host:port, the token
   ``[a-z0-9]{6}.[a-z0-9]{16}``, caCertHashes required unless unsafeSkipCAVerification;
2. preflight (join): FileAvailable (kubelet.conf, bootstrap-kubelet.conf, caCertPath),
   CRI (the socket answers), Swap (warning), FileContent--proc-sys-net-ipv4-ip_forward
   (IPv4 endpoint), Port-10250; ``nodeRegistration.ignorePreflightErrors`` downgrades;
3. discovery: the cluster CA's public key must be pinned (sha256 of the DER
   SubjectPublicKeyInfo, kubeadm's pubkeypin);
4. kubelet-start: bootstrap-kubelet.conf, the CA at caCertPath, ``systemctl stop
   kubelet``, /var/lib/kubelet/instance-config.yaml (the node's criSocket as
   ``containerRuntimeEndpoint``: NodeLocalCRISocket, on by default in 1.35) patched into
   /var/lib/kubelet/config.yaml, kubeadm-flags.env (no --container-runtime-endpoint),
   ``systemctl daemon-reload``
   + ``systemctl restart kubelet`` (PATH lookup: a shim first in PATH is used), then wait
   for the kubelet's healthz and for /etc/kubernetes/kubelet.conf (TLS bootstrap).

``kubeadm reset -f`` stops the kubelet and removes what join wrote. Exit 1 on failure.
$NF_STANDIN_ROOT (default /) prefixes every path, for tests against a temporary root;
$NF_STANDIN_KUBELET_TIMEOUT (seconds, default 240 = kubeadm's 4m0s) bounds the wait.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request

import yaml

VERSION = "@VERSION@"
ROOT = os.environ.get("NF_STANDIN_ROOT", "/")
LOG = "/var/log/nodeforge-standins.log"
JOIN_COPY = "/var/log/nodeforge-standins-kubeadm-join.yaml"
CLUSTER_DIR = "/usr/share/nodeforge-standin/cluster"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
BOOTSTRAP_CONF = "/etc/kubernetes/bootstrap-kubelet.conf"
CA_CERT_PATH = "/etc/kubernetes/pki/ca.crt"
KUBELET_DIR = "/var/lib/kubelet"
INSTANCE_CONFIG = KUBELET_DIR + "/instance-config.yaml"
GROUP = "kubeadm.k8s.io"
OLD_VERSIONS = ("v1alpha1", "v1alpha2", "v1alpha3", "v1beta1", "v1beta2")
DEPRECATED_VERSIONS = ("v1beta3",)
CRI_SOCKETS = ("unix:///var/run/containerd/containerd.sock", "unix:///var/run/crio/crio.sock")
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
NO_PIN = (
    'discovery.bootstrapToken.caCertHashes: Invalid value: "": using token-based discovery '
    "without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm "
    "config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue"
)
HASH_RE = re.compile(r"^sha256:[0-9a-fA-F]{64}$")

# v1beta4 JoinConfiguration (types.go json tags), the parts a worker join reads
ARG = {"name": "string", "value": "string"}
TAINT = {"key": "string", "value": "string", "effect": "string", "timeAdded": "string"}
SCHEMA: dict = {
    "apiVersion": "string",
    "kind": "string",
    "dryRun": "bool",
    "nodeRegistration": {
        "name": "string",
        "criSocket": "string",
        "taints": [TAINT],
        "kubeletExtraArgs": [ARG],
        "ignorePreflightErrors": ["string"],
        "imagePullPolicy": "string",
        "imagePullSerial": "bool",
    },
    "caCertPath": "string",
    "discovery": {
        "bootstrapToken": {
            "token": "string",
            "apiServerEndpoint": "string",
            "caCertHashes": ["string"],
            "unsafeSkipCAVerification": "bool",
        },
        "file": {"kubeConfigPath": "string"},
        "tlsBootstrapToken": "string",
    },
    "controlPlane": {
        "localAPIEndpoint": {"advertiseAddress": "string", "bindPort": "int"},
        "certificateKey": "string",
    },
    "skipPhases": ["string"],
    "patches": {"directory": "string"},
    "timeouts": {
        k: "string"
        for k in (
            "controlPlaneComponentHealthCheck",
            "kubeletHealthCheck",
            "kubernetesAPICall",
            "etcdAPICall",
            "tlsBootstrap",
            "discovery",
            "upgradeManifests",
        )
    },
}


class Fail(Exception):
    pass


def p(path: str) -> str:
    return os.path.join(ROOT, path.lstrip("/"))


def log(msg: str) -> None:
    try:
        with open(p(LOG), "a") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f" kubeadm {msg}\n")
    except OSError:
        pass


def warn(msg: str) -> None:
    print(f"W kubeadm] {msg}", file=sys.stderr)


def decode(obj: object, schema: object, where: str, unknown: list[str]) -> list[str]:
    """Type errors (fatal); unknown fields go to ``unknown`` (kubeadm only warns)."""
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            return [f"{where}: cannot unmarshal {type(obj).__name__} into an object"]
        errs = []
        for key, val in obj.items():
            if key not in schema:
                unknown.append(f"{where}.{key}" if where else str(key))
            else:
                errs += decode(val, schema[key], f"{where}.{key}" if where else key, unknown)
        return errs
    if isinstance(schema, list):
        if obj is None:
            return []
        if not isinstance(obj, list):
            return [f"{where}: cannot unmarshal {type(obj).__name__} into an array"]
        return [
            e for i, x in enumerate(obj) for e in decode(x, schema[0], f"{where}[{i}]", unknown)
        ]
    want = {"string": str, "bool": bool, "int": int}[str(schema)]
    if obj is None or (isinstance(obj, want) and not (want is int and isinstance(obj, bool))):
        return []
    return [f"{where}: cannot unmarshal {type(obj).__name__} into Go value of type {schema}"]


def load_join_config(path: str) -> dict:
    try:
        with open(path) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise Fail(f"unable to read config from {path!r}: {exc}") from exc
    join = None
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            raise Fail("invalid configuration: kind and apiVersion is mandatory information")
        group, _, version = str(doc["apiVersion"]).rpartition("/")
        if doc["kind"] != "JoinConfiguration":
            continue
        if group != GROUP or version in OLD_VERSIONS:
            raise Fail(f"your configuration file uses an old or unknown API spec: "
                       f"{doc['apiVersion']!r} (kind: \"JoinConfiguration\")")  # fmt: skip
        if version in DEPRECATED_VERSIONS:
            warn(f"your configuration file uses a deprecated API spec: {doc['apiVersion']!r}")
        elif version != "v1beta4":
            raise Fail(f'no kind "JoinConfiguration" is registered for version '
                       f'"{doc["apiVersion"]}"')  # fmt: skip
        join = doc
    if join is None:
        raise Fail("no JoinConfiguration found in the supplied config")
    unknown: list[str] = []
    errs = decode(join, SCHEMA, "", unknown)
    for u in unknown:  # strict decoding: logged, not fatal
        warn(f'error unmarshaling configuration JoinConfiguration: unknown field "{u}"')
    if errs:
        raise Fail("error unmarshaling JoinConfiguration: " + "; ".join(errs))
    return join


def known(d: dict, *keys: str) -> dict:
    """A sub-mapping with only the fields kubeadm knows (unknown ones were dropped)."""
    for k in keys:
        d = d.get(k) or {}
    return d


def validate(cfg: dict) -> None:
    bt = known(cfg, "discovery", "bootstrapToken")
    errs = []
    if not bt and not known(cfg, "discovery", "file"):
        errs.append('discovery: Invalid value: "": bootstrapToken or file must be set')
    if bt:
        ep = str(bt.get("apiServerEndpoint") or "")
        if not ep:
            errs.append("discovery.bootstrapToken: Required value: APIServerEndpoint is not set")
        elif not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\[\]]+):[0-9]{1,5}", ep):
            errs.append(f'discovery.bootstrapToken.apiServerEndpoint: Invalid value: "{ep}"')
        if not bt.get("caCertHashes") and not bt.get("unsafeSkipCAVerification"):
            errs.append(NO_PIN)
        for h in bt.get("caCertHashes") or []:
            if not HASH_RE.match(str(h)):
                errs.append(f'discovery.bootstrapToken.caCertHashes: Invalid value: "{h}"')
        if not TOKEN_RE.match(str(bt.get("token") or "")):
            errs.append('discovery.bootstrapToken.token: Invalid value: "": '
                        "the bootstrap token is invalid")  # fmt: skip
    if errs:
        raise Fail("[" + ", ".join(errs) + "]")


# -- preflight ------------------------------------------------------------------------------
def cri_socket(cfg: dict) -> str:
    sock = known(cfg, "nodeRegistration").get("criSocket")
    if sock:
        return str(sock)
    found = [s for s in CRI_SOCKETS if os.path.exists(p(s.removeprefix("unix://")))]
    if len(found) != 1:
        raise Fail("found multiple CRI endpoints on the host" if found else
                   "no known CRI endpoint found on the host")  # fmt: skip
    return found[0]


def cri_answers(sock: str) -> bool:
    path = p(sock.removeprefix("unix://"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
        return True
    except OSError:
        return False


def preflight(cfg: dict) -> None:
    reg = known(cfg, "nodeRegistration")
    ignore = {str(x).lower() for x in reg.get("ignorePreflightErrors") or []}
    checks: list[tuple[str, str | None, str | None]] = []  # name, warning, error
    ca_path = str(cfg.get("caCertPath") or CA_CERT_PATH)
    for f in (KUBELET_CONF, BOOTSTRAP_CONF, ca_path):
        name = "FileAvailable-" + f.replace("/", "-")
        checks.append((name, None, f"{f} already exists" if os.path.exists(p(f)) else None))
    sock = cri_socket(cfg)
    err = None if cri_answers(sock) else (
        f"container runtime is not running: validate service connection: validate CRI v1 "
        f'runtime API for endpoint "{sock}": rpc error: code = Unavailable')  # fmt: skip
    checks.append(("CRI", None, err))
    try:
        with open(p("/proc/swaps")) as fh:
            swaps = fh.read().splitlines()
    except OSError:
        swaps = []
    swap_warn = "swap is supported for cgroup v2 only. The kubelet must be properly " \
        "configured to use swap." if len(swaps) > 1 else None  # fmt: skip
    checks.append(("Swap", swap_warn, None))
    host = str(known(cfg, "discovery", "bootstrapToken").get("apiServerEndpoint") or "")
    host = host.rpartition(":")[0].strip("[]")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", host):
        f = "/proc/sys/net/ipv4/ip_forward"
        try:
            with open(p(f), "rb") as fh:
                ok = fh.read(1) == b"1"
            err = None if ok else f"{f} contents are not set to 1"
        except OSError:
            err = f"{f} does not exist"
        checks.append(("FileContent-" + f.replace("/", "-"), None, err))
    port = int(os.environ.get("NF_STANDIN_KUBELET_PORT", "10250"))
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
            err = None
        except OSError:
            err = f"Port {port} is in use"
    checks.append((f"Port-{port}", None, err))
    errors = []
    for name, w, e in checks:
        if e and ("all" in ignore or name.lower() in ignore):
            w, e = e, None
        if w:
            print(f"\t[WARNING {name}]: {w}", file=sys.stderr)
        if e:
            errors.append(f"\t[ERROR {name}]: {e}")
    if errors:
        print("[preflight] Some fatal errors occurred:\n" + "\n".join(errors), file=sys.stderr)
        raise Fail("error execution phase preflight: preflight checks failed")


# -- discovery ------------------------------------------------------------------------------
def spki_sha256(pem: bytes) -> str:
    der = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=pem,
                         capture_output=True, check=True).stdout  # fmt: skip
    spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=der,
                          capture_output=True, check=True).stdout  # fmt: skip
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def discover(cfg: dict) -> bytes:
    bt = known(cfg, "discovery", "bootstrapToken")
    try:
        with open(p(CLUSTER_DIR + "/ca.crt"), "rb") as fh:
            ca = fh.read()
    except OSError as exc:
        raise Fail("error execution phase preflight: couldn't validate the identity of the "
                   f"API Server: no cluster-info ({exc})") from exc  # fmt: skip
    if bt.get("unsafeSkipCAVerification"):
        return ca
    got = spki_sha256(ca)
    pins = {str(h).lower() for h in bt.get("caCertHashes") or []}
    if got not in pins:
        raise Fail("error execution phase preflight: couldn't validate the identity of the "
                   "API Server: cluster CA found in cluster-info ConfigMap is invalid: none of "
                   f'the public keys "{got}" are pinned')  # fmt: skip
    return ca


# -- kubelet-start --------------------------------------------------------------------------
def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(p(path)), exist_ok=True)
    tmp = p(path) + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, p(path))


def systemctl(*args: str) -> int:
    exe = shutil.which("systemctl")
    if not exe:
        print("[kubelet-start] No supported init system detected", file=sys.stderr)
        return 1
    log("systemctl " + " ".join(args))
    try:  # the real kubeadm waits without bound; the stand-in gives up after 120 s
        return subprocess.run([exe, *args], timeout=120).returncode
    except subprocess.TimeoutExpired:
        warn(f"{exe} {' '.join(args)}: no answer after 120 s (a job waiting on ordering?)")
        return 124


def kubelet_start(cfg: dict, ca: bytes) -> None:
    bt = known(cfg, "discovery", "bootstrapToken")
    reg = known(cfg, "nodeRegistration")
    server = "https://" + str(bt["apiServerEndpoint"])
    ca_b64 = base64.b64encode(ca).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubernetes",
                      "cluster": {"server": server, "certificate-authority-data": ca_b64}}],
        "contexts": [{"name": "tls-bootstrap-token-user@kubernetes",
                      "context": {"cluster": "kubernetes", "user": "tls-bootstrap-token-user"}}],
        "current-context": "tls-bootstrap-token-user@kubernetes",
        "users": [{"name": "tls-bootstrap-token-user", "user": {"token": str(bt["token"])}}],
    }  # fmt: skip
    write(BOOTSTRAP_CONF, yaml.safe_dump(kubeconfig), 0o600)
    ca_path = str(cfg.get("caCertPath") or CA_CERT_PATH)
    if not os.path.exists(p(ca_path)):
        write(ca_path, ca.decode())
    systemctl("stop", "kubelet")  # TryStopKubelet: errors only logged
    try:
        with open(p(CLUSTER_DIR + "/kubelet-config.yaml")) as fh:
            kubelet_config = fh.read()
    except OSError as exc:
        raise Fail(f"error execution phase kubelet-start: no kubelet-config ({exc})") from exc
    # NodeLocalCRISocket (beta, on by default in 1.34/1.35): the node's CRI endpoint goes to
    # instance-config.yaml, applied as a patch over the cluster's KubeletConfiguration; the
    # flags file carries no --container-runtime-endpoint (UPSTREAM.md, "join: kubelet-start")
    sock = cri_socket(cfg)
    write(INSTANCE_CONFIG, f"containerRuntimeEndpoint: {json.dumps(sock)}\n")
    merged = yaml.safe_load(kubelet_config) or {}
    merged["containerRuntimeEndpoint"] = sock
    write(KUBELET_DIR + "/config.yaml", yaml.safe_dump(merged, sort_keys=True))
    args: list[str] = []
    extra = {str(a.get("name")): str(a.get("value")) for a in reg.get("kubeletExtraArgs") or []}
    name = str(reg.get("name") or socket.gethostname())
    if name != socket.gethostname():
        args.append(f"--hostname-override={name}")
    taints = [f"{t.get('key')}{'=' + str(t['value']) if t.get('value') else ''}:{t.get('effect')}"
              for t in reg.get("taints") or []]  # fmt: skip
    if taints:
        args.append("--register-with-taints=" + ",".join(taints))
    args += [f"--{k}={v}" for k, v in sorted(extra.items())]
    write(KUBELET_DIR + "/kubeadm-flags.env", f'KUBELET_KUBEADM_ARGS="{" ".join(args)}"\n')
    print("[kubelet-start] Starting the kubelet")
    systemctl("daemon-reload")
    if systemctl("restart", "kubelet") != 0:  # TryStartKubelet: a warning, the wait decides
        warn("[kubelet-start] WARNING: unable to start the kubelet service")
    wait_for_kubelet(merged)


def wait_for_kubelet(kc: dict) -> None:
    timeout = float(os.environ.get("NF_STANDIN_KUBELET_TIMEOUT", "240"))
    url = (
        f"http://{kc.get('healthzBindAddress', '127.0.0.1')}:{kc.get('healthzPort', 10248)}/healthz"
    )
    deadline = time.monotonic() + timeout
    healthy = False
    while time.monotonic() < deadline:
        if not healthy:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    healthy = r.status == 200
            except OSError:
                pass
        if healthy and os.path.exists(p(KUBELET_CONF)):
            with contextlib.suppress(OSError):
                os.unlink(p(BOOTSTRAP_CONF))
            return
        time.sleep(0.5)
    print("\nUnfortunately, an error has occurred:\n\t" + (
        "timed out waiting for the kubelet's TLS bootstrap" if healthy
        else f"The kubelet is not healthy after {timeout:g}s") +
        "\n\nThis error is likely caused by:\n\t- The kubelet is not running")  # fmt: skip
    raise Fail("error execution phase kubelet-start: the kubelet did not come up")


def join(argv: list[str]) -> None:
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        raise Fail("stand-in kubeadm: only `join --config FILE` is reproduced")
    path = argv[argv.index("--config") + 1]
    try:  # keep a copy (0600: it holds a bootstrap token) for the boot tests' report
        os.makedirs(os.path.dirname(p(JOIN_COPY)), exist_ok=True)
        shutil.copyfile(path, p(JOIN_COPY))
        os.chmod(p(JOIN_COPY), stat.S_IRUSR | stat.S_IWUSR)
    except OSError:
        pass
    cfg = load_join_config(path)
    validate(cfg)
    print("[preflight] Running pre-flight checks")
    preflight(cfg)
    ca = discover(cfg)
    kubelet_start(cfg, ca)
    print("\nThis node has joined the cluster")


def reset() -> None:
    systemctl("stop", "kubelet")
    for f in (KUBELET_CONF, BOOTSTRAP_CONF, CA_CERT_PATH, KUBELET_DIR + "/config.yaml",
              KUBELET_DIR + "/kubeadm-flags.env", INSTANCE_CONFIG):  # fmt: skip
        with contextlib.suppress(OSError):
            os.unlink(p(f))


def main(argv: list[str]) -> int:
    log(" ".join(argv))
    if argv[:1] in (["version"], ["--version"]):
        print(json.dumps({"clientVersion": {"gitVersion": "v" + VERSION.split("-")[0]}})
              if "-o" in argv else f"kubeadm version {VERSION} (nodeforge stand-in)")  # fmt: skip
        return 0
    try:
        if argv[:1] == ["join"]:
            join(argv[1:])
        elif argv[:1] == ["reset"]:
            reset()
        else:
            print(f"stand-in kubeadm: {' '.join(argv[:1])} not reproduced", file=sys.stderr)
            return 1
    except Fail as exc:
        print(str(exc), file=sys.stderr)
        log(f"failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
