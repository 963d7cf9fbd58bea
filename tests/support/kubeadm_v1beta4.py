"""The kubeadm config API v1beta4 (Init/Cluster configuration) as data, for structural checks.

Independent source for the tests of builder/hub/kubeadm.py: transcribed by hand from
kubernetes/kubernetes ``cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go`` at commit
1329935739c3aa007d23cb9a4dadfee9d59ff79b (read 2026-11-30), the json tags of each struct
field; inline members (``metav1.TypeMeta``, ``ControlPlaneComponent``, ``ImageMeta``,
``corev1.EnvVar``) flattened into their parents. ``corev1.Taint`` is {key, value, effect,
timeAdded}; ``metav1.Duration`` is a string such as "4m0s".

kubeadm decodes strictly in ``kubeadm config validate`` (unknown or duplicate fields are
errors there, warnings in ``init``/``join``); wrong types are errors everywhere. The
validator below rejects both.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "kubeadm.k8s.io/v1beta4"
SOURCE = (
    "kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go "
    "@1329935739c3aa007d23cb9a4dadfee9d59ff79b"
)

TYPE_META = {"apiVersion": "string", "kind": "string"}

STRUCTS: dict[str, dict[str, str]] = {
    "InitConfiguration": {
        **TYPE_META,
        "bootstrapTokens": "[]BootstrapToken",
        "dryRun": "bool",
        "nodeRegistration": "NodeRegistrationOptions",
        "localAPIEndpoint": "APIEndpoint",
        "certificateKey": "string",
        "skipPhases": "[]string",
        "patches": "Patches",
        "timeouts": "Timeouts",
    },
    "ClusterConfiguration": {
        **TYPE_META,
        "etcd": "Etcd",
        "networking": "Networking",
        "kubernetesVersion": "string",
        "controlPlaneEndpoint": "string",
        "apiServer": "APIServer",
        "controllerManager": "ControlPlaneComponent",
        "scheduler": "ControlPlaneComponent",
        "dns": "DNS",
        "proxy": "Proxy",
        "certificatesDir": "string",
        "imageRepository": "string",
        "featureGates": "map[string]bool",
        "clusterName": "string",
        "encryptionAlgorithm": "EncryptionAlgorithm",
        "certificateValidityPeriod": "Duration",
        "caCertificateValidityPeriod": "Duration",
    },
    "ControlPlaneComponent": {
        "extraArgs": "[]Arg",
        "extraVolumes": "[]HostPathMount",
        "extraEnvs": "[]EnvVar",
    },
    "APIServer": {
        "extraArgs": "[]Arg",
        "extraVolumes": "[]HostPathMount",
        "extraEnvs": "[]EnvVar",
        "certSANs": "[]string",
    },
    "DNS": {"imageRepository": "string", "imageTag": "string", "disabled": "bool"},
    "Proxy": {"disabled": "bool"},
    "APIEndpoint": {"advertiseAddress": "string", "bindPort": "int32"},
    "NodeRegistrationOptions": {
        "name": "string",
        "criSocket": "string",
        "taints": "[]Taint",
        "kubeletExtraArgs": "[]Arg",
        "ignorePreflightErrors": "[]string",
        "imagePullPolicy": "PullPolicy",
        "imagePullSerial": "bool",
    },
    "Networking": {"serviceSubnet": "string", "podSubnet": "string", "dnsDomain": "string"},
    "Etcd": {"local": "LocalEtcd", "external": "ExternalEtcd"},
    "LocalEtcd": {
        "imageRepository": "string",
        "imageTag": "string",
        "dataDir": "string",
        "extraArgs": "[]Arg",
        "extraEnvs": "[]EnvVar",
        "serverCertSANs": "[]string",
        "peerCertSANs": "[]string",
    },
    "ExternalEtcd": {
        "endpoints": "[]string",
        "caFile": "string",
        "certFile": "string",
        "keyFile": "string",
    },
    "Patches": {"directory": "string"},
    "Timeouts": {
        "controlPlaneComponentHealthCheck": "Duration",
        "kubeletHealthCheck": "Duration",
        "kubernetesAPICall": "Duration",
        "etcdAPICall": "Duration",
        "tlsBootstrap": "Duration",
        "discovery": "Duration",
        "upgradeManifests": "Duration",
    },
    "Arg": {"name": "string", "value": "string"},
    "EnvVar": {"name": "string", "value": "string", "valueFrom": "any"},
    "HostPathMount": {
        "name": "string",
        "hostPath": "string",
        "mountPath": "string",
        "readOnly": "bool",
        "pathType": "string",
    },
    "Taint": {"key": "string", "value": "string", "effect": "string", "timeAdded": "string"},
    "BootstrapToken": {
        "token": "string",
        "description": "string",
        "ttl": "Duration",
        "expires": "string",
        "usages": "[]string",
        "groups": "[]string",
    },
}

ENUMS = {
    "EncryptionAlgorithm": {"RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256"},
    "PullPolicy": {"Always", "IfNotPresent", "Never"},
}
# fields without omitempty that a decoder still accepts when absent: none are required for
# Init/ClusterConfiguration (LocalEtcd.dataDir and ExternalEtcd.* only inside their parents)
REQUIRED = {"Arg": {"name", "value"}}


def validate(obj: Any, type_name: str, path: str = "") -> list[str]:
    """Problems (``path: message``) of ``obj`` against the v1beta4 type ``type_name``."""
    where = path or type_name
    if type_name == "any":
        return []
    if type_name.startswith("[]"):
        if not isinstance(obj, list):
            return [f"{where}: must be a list, got {type(obj).__name__}"]
        out: list[str] = []
        for i, item in enumerate(obj):
            out += validate(item, type_name[2:], f"{where}[{i}]")
        return out
    if type_name == "map[string]bool":
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in obj.items()
        ):
            return [f"{where}: must be a mapping of string to bool"]
        return []
    if type_name in ("string", "Duration"):
        return [] if isinstance(obj, str) else [f"{where}: must be a string"]
    if type_name == "bool":
        return [] if isinstance(obj, bool) else [f"{where}: must be a bool"]
    if type_name == "int32":
        ok = isinstance(obj, int) and not isinstance(obj, bool) and -(2**31) <= obj < 2**31
        return [] if ok else [f"{where}: must be an int32"]
    if type_name in ENUMS:
        return [] if obj in ENUMS[type_name] else [f"{where}: {obj!r} not in {ENUMS[type_name]}"]
    fields = STRUCTS[type_name]
    if not isinstance(obj, dict):
        return [f"{where}: must be a mapping ({type_name})"]
    out = []
    for key, value in obj.items():
        if key not in fields:
            out.append(f"{where}: unknown field {key!r} in {type_name}")
            continue
        out += validate(value, fields[key], f"{path}.{key}" if path else key)
    for key in REQUIRED.get(type_name, ()):
        if key not in obj:
            out.append(f"{where}: missing {key!r}")
    return out


def validate_document(doc: Any) -> list[str]:
    """A whole YAML document: apiVersion must be v1beta4, kind Init/ClusterConfiguration."""
    if not isinstance(doc, dict):
        return ["document: must be a mapping"]
    if doc.get("apiVersion") != API_VERSION:
        return [f"apiVersion: {doc.get('apiVersion')!r} is not {API_VERSION}"]
    kind = doc.get("kind")
    if kind not in ("InitConfiguration", "ClusterConfiguration"):
        return [f"kind: {kind!r} is not InitConfiguration or ClusterConfiguration"]
    return validate(doc, kind)
