"""Profile validation: the JSON schema, then small cross-field checks, then referenced files.

Every problem is a string ``file: key.path: message`` naming the layer that set the key;
``validate_data`` collects them all (sorted) so that one run reports everything.
Each cross-field check is a function ``(Ctx) -> list[str]`` in ``CROSS_CHECKS``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import __version__, paths
from builder.paths import SCHEMA_DIR

if TYPE_CHECKING:
    import jsonschema

from .common import (
    DEFAULTS_SOURCE,
    Path_,
    did_you_mean,
    display_path,
    file_ref_path,
    kind,
    source_for,
)

SCHEMA_FILE = SCHEMA_DIR / "profile.schema.json"

# Always loaded / always 1: a node without them cannot run Kubernetes networking.
REQUIRED_MODULES = ("overlay", "br_netfilter")
REQUIRED_SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": 1,
    "net.bridge.bridge-nf-call-ip6tables": 1,
    "net.ipv4.ip_forward": 1,
}
# Keys whose values are secrets: only references are allowed, values are masked in output.
SECRET_KEYS = ("admin.password", "enrollment.site_token")
VERSION_RE = re.compile(r"^(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(\.(?P<patch>[0-9]+))?$")
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

Where = Callable[[Iterable[Any]], str]


def validate_data(
    data: Mapping[str, Any],
    sources: Mapping[Path_, str],
    site_file: str,
    layer_order: Iterable[str] = (),
    lines: Mapping[str, Mapping[Path_, int]] | None = None,
) -> list[str]:
    """Schema + cross-field checks. Returns every problem as ``file: key.path: message``
    (``file: line N: key.path: message`` where the layer's YAML has the key or a parent)."""
    problems: list[str] = []

    def where(path: Iterable[Any]) -> str:
        path = tuple(str(p) for p in path)
        dotted = ".".join(path) or "(top level)"
        src = source_for(sources, path, site_file)
        line = _line_of((lines or {}).get(src, {}), path)
        return f"{src}: line {line}: {dotted}" if line else f"{src}: {dotted}"

    schema = load_schema()
    memo = _schema_pass_mark(schema, data)
    schema_failed: set[Path_] = set()
    if memo is None or not memo.is_file():
        import jsonschema  # ~50 ms to import: only when the schema really has to run

        for err in jsonschema.Draft202012Validator(schema).iter_errors(data):
            path = tuple(str(p) for p in err.absolute_path)
            schema_failed.add(path)
            problems.extend(_schema_messages(err, path, where))
        if memo is not None and not schema_failed:
            _remember(memo)
    ctx = Ctx(data, sources, where, schema_failed, tuple(layer_order))
    for check in CROSS_CHECKS:
        problems.extend(check(ctx))
    return sorted(set(problems))


def _line_of(lines: Mapping[Path_, int], path: Path_) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())  # type: ignore[no-any-return]


def _plain(value: Any) -> bool:
    """Only JSON's own types (text keys): their JSON text stands for them one to one."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _schema_pass_mark(schema: Mapping[str, Any], data: Mapping[str, Any]) -> Path | None:
    """Where a schema pass of ``data`` is remembered (issue 17: ``builder validate`` with
    nothing changed skips importing jsonschema): keyed by the schema, the data's canonical
    JSON, this code, the builder version and jsonschema's installed files. None when the
    data holds anything but JSON's own types (then the schema always runs)."""
    if not isinstance(data, dict) or not _plain(data):
        return None
    spec = importlib.util.find_spec("jsonschema")
    origin = spec.origin if spec else None
    st = os.stat(origin) if origin else None
    h = hashlib.sha256(f"profile-schema\0{__version__}\0".encode())
    h.update(json.dumps([origin, st.st_size, st.st_mtime_ns] if st else None).encode())
    h.update(hashlib.sha256(Path(__file__).read_bytes()).digest())
    for doc in (schema, data):
        h.update(json.dumps(doc, sort_keys=True, allow_nan=False).encode() + b"\0")
    return paths.cache_dir() / "validate" / f"profile-schema-{h.hexdigest()}"


def _remember(mark: Path) -> None:
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        tmp = mark.with_name(f".{mark.name}.{os.getpid()}.tmp")
        tmp.write_text('{"check": "profile-schema", "passed": true}')
        os.replace(tmp, mark)
    except OSError:  # a cache that cannot be written only costs time
        pass


# ---------------------------------------------------------------------------------------
# schema messages


def _schema_messages(err: jsonschema.ValidationError, path: Path_, where: Where) -> list[str]:
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        allowed = list((err.schema.get("properties") or {}).keys())
        out = []
        for key in err.instance:
            if key in allowed:
                continue
            msg = f"{where((*path, key))}: unknown key"
            guess = did_you_mean(str(key), allowed)
            out.append(f"{msg} ({guess})" if guess else f"{msg}; allowed: {', '.join(allowed)}")
        return out
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return [f"{where((*path, missing))}: required key is missing"]
    if err.validator == "pattern":
        form = _pattern_hint(path) or f" (the form: {err.validator_value})"
        return [f"{where(path)}: {err.instance!r} is not in the expected form{form}"]
    if err.validator in ("anyOf", "oneOf"):
        if path and path[-1] in {k.rsplit(".", 1)[-1] for k in SECRET_KEYS}:
            return [
                f"{where(path)}: must be a reference (env:NAME or file:PATH), "
                "never the secret itself"
            ]
        import jsonschema

        best = jsonschema.exceptions.best_match(err.context or [err])
        return (
            _schema_messages(best, tuple(str(p) for p in best.absolute_path), where)
            if best is not err
            else [f"{where(path)}: {err.message}"]
        )
    if err.validator == "type":
        msg = f"{where(path)}: expected {err.validator_value}, got {kind(err.instance)}"
        wanted = err.validator_value
        wants_text = wanted == "string" or (isinstance(wanted, list) and "string" in wanted)
        number = isinstance(err.instance, int | float) and not isinstance(err.instance, bool)
        if wants_text and number:  # `version: 1.34` is a float to YAML
            msg += f'; YAML read {err.instance!r} as a number: quote it ("{err.instance}")'
        return [msg]
    if err.validator == "enum":
        opts = ", ".join(repr(v) for v in err.validator_value)
        return [f"{where(path)}: {err.instance!r} is not one of {opts}"]
    return [f"{where(path)}: {err.message}"]


_PATTERN_HINTS = {
    "hub_public_key": " (a WireGuard public key: 44 base64 characters)",
    "ca_pin": " (sha256:<64 hex digits>, as printed by `builder hub init`)",
    "url": " (an https:// or file:// URL)",
    "key_url": " (an https:// or file:// URL)",
    "volume_id": " (1-32 characters A-Z 0-9 _)",
    "hub_endpoint": " (host:port)",
    "release": " (like 24.04)",
    "username": " (lower-case letters, digits, _ and -)",
    "interface": " (an interface name: 1-15 of A-Z a-z 0-9 _ = + . -)",
    "driver_branch": ' (the 3-digit NVIDIA driver branch, like "570")',
    "container_toolkit_version": ' (like "1.20.0")',
    "sha256": " (64 lower-case hex digits)",
    "kms_key_id": " (a KMS key id, alias/NAME, or key/alias ARN)",
}
_KMS_HINT = _PATTERN_HINTS["kms_key_id"]


def _pattern_hint(path: Path_) -> str:
    if path == ("aws", "region_kms_key_ids"):  # a key of the map
        return " (an AWS region name, like eu-central-1)"
    if path[:2] == ("aws", "region_kms_key_ids"):
        return f"{_KMS_HINT[:-1]}, or '' for the region's default key)"
    if path and path[-1] in _PATTERN_HINTS:
        return _PATTERN_HINTS[path[-1]]
    if path[:2] == ("admin", "ssh_authorized_keys"):
        return " (an OpenSSH public key line)"
    return ""


# ---------------------------------------------------------------------------------------
# cross-field checks


@dataclass(frozen=True)
class Ctx:
    """What every cross-field check sees: the merged data, provenance, the schema failures."""

    data: Mapping[str, Any]
    sources: Mapping[Path_, str]
    where: Where
    failed: set[Path_]  # key paths the schema already reported
    layers: tuple[str, ...] = ()  # layer sources, lowest (builder defaults) first

    def rank(self, source: str) -> int:
        """How late ``source`` comes in the layering (unknown sources count as last)."""
        return self.layers.index(source) if source in self.layers else len(self.layers)

    def get(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return node

    def at(self, dotted: str, *more: Any) -> str:
        """``file: key.path`` for a dotted key (plus extra path parts)."""
        return self.where((*dotted.split("."), *more))


def _minor(ctx: Ctx, dotted: str, problems: list[str]) -> tuple[int, int] | None:
    value = ctx.get(dotted)
    if not isinstance(value, str):
        return None
    m = VERSION_RE.match(value)
    if not m:
        problems.append(
            f"{ctx.at(dotted)}: {value!r} is not a version "
            "(MAJOR.MINOR or MAJOR.MINOR.PATCH, no leading v)"
        )
        return None
    return int(m["major"]), int(m["minor"])


def check_versions(ctx: Ctx) -> list[str]:
    """Versions well-formed; CRI-O minor == Kubernetes minor; Kubernetes 1.30 or newer."""
    problems: list[str] = []
    k8s = _minor(ctx, "kubernetes.version", problems)
    crio = _minor(ctx, "crio.version", problems)
    if k8s and crio and k8s != crio:
        problems.append(
            f"{ctx.at('crio.version')}: CRI-O {crio[0]}.{crio[1]} does not match "
            f"Kubernetes {k8s[0]}.{k8s[1]} (CRI-O follows the Kubernetes minor)"
        )
    if k8s and (k8s[0] != 1 or k8s[1] < 30):
        problems.append(
            f"{ctx.at('kubernetes.version')}: Kubernetes {k8s[0]}.{k8s[1]} "
            "is not supported (1.30 or newer)"
        )
    return problems


NETWORK_KEYS = (
    "wireguard.overlay_cidr",
    "kubernetes.pod_cidr",
    "kubernetes.service_cidr",
    "network.site_lan",
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(ctx: Ctx, dotted: str) -> Network | None:
    """The network at ``dotted``, None when unset, schema-failed or not in CIDR form."""
    value = ctx.get(dotted)
    if value is None or tuple(dotted.split(".")) in ctx.failed:
        return None
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        return None


def check_networks(ctx: Ctx) -> list[str]:
    """Every network in CIDR form; overlay, pods, services and the site LAN do not overlap."""
    problems: list[str] = []
    nets: dict[str, Network] = {}
    for dotted in NETWORK_KEYS:
        value = ctx.get(dotted)
        if value is None or tuple(dotted.split(".")) in ctx.failed:
            continue
        try:
            nets[dotted] = ipaddress.ip_network(str(value), strict=True)
        except ValueError as exc:
            problems.append(f"{ctx.at(dotted)}: {value!r} is not a network in CIDR form ({exc})")
    names = list(nets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            na, nb = nets[a], nets[b]
            if na.version == nb.version and na.overlaps(nb):
                problems.append(f"{ctx.at(b)}: {nb} overlaps {a} ({na})")
    return problems


def check_hub_overlay_ip(ctx: Ctx) -> list[str]:
    """The hub's overlay address: inside the overlay, not its network/broadcast address."""
    overlay = _network(ctx, "wireguard.overlay_cidr")
    hub_ip = ctx.get("wireguard.hub_overlay_ip")
    if overlay is None or hub_ip is None:
        return []
    problems: list[str] = []
    key = "wireguard.hub_overlay_ip"
    try:
        ip = ipaddress.ip_address(str(hub_ip))
    except ValueError:
        problems.append(f"{ctx.at(key)}: {hub_ip!r} is not an IP address")
    else:
        if ip not in overlay:
            problems.append(f"{ctx.at(key)}: {ip} is outside the overlay {overlay}")
        elif overlay.num_addresses > 2 and ip in (
            overlay.network_address,
            overlay.broadcast_address,
        ):
            problems.append(f"{ctx.at(key)}: {ip} is the network or broadcast address of {overlay}")
    if overlay.num_addresses < 4:
        problems.append(
            f"{ctx.at('wireguard.overlay_cidr')}: {overlay} leaves no addresses for nodes"
        )
    return problems


def check_static_network(ctx: Ctx) -> list[str]:
    """A static address's gateway is on its network."""
    static = ctx.get("network.static")
    if not isinstance(static, Mapping) or ("network", "static") in ctx.failed:
        return []
    try:
        iface = ipaddress.ip_interface(str(static.get("address")))
        gw = ipaddress.ip_address(str(static.get("gateway")))
    except ValueError as exc:
        return [f"{ctx.at('network.static')}: {exc}"]
    if gw not in iface.network:
        return [f"{ctx.at('network.static.gateway')}: {gw} is not in {iface.network}"]
    return []


def check_required_sysctls(ctx: Ctx) -> list[str]:
    """The sysctls Kubernetes networking needs cannot be turned off."""
    sysctls = ctx.get("kernel.sysctls") or {}
    if not isinstance(sysctls, Mapping):
        return []
    return [
        f"{ctx.at('kernel.sysctls', name)}: must be {want} on a Kubernetes node"
        for name, want in REQUIRED_SYSCTLS.items()
        if name in sysctls and str(sysctls[name]) != str(want)
    ]


def check_labels(ctx: Ctx) -> list[str]:
    """Node labels: valid Kubernetes label keys and values."""
    labels = ctx.get("kubernetes.labels") or {}
    if not isinstance(labels, Mapping):
        return []
    problems: list[str] = []
    for k, v in labels.items():
        if not LABEL_KEY_RE.match(str(k)) or len(str(k).split("/")[-1]) > 63:
            problems.append(f"{ctx.at('kubernetes.labels', k)}: not a valid label key")
        if isinstance(v, str) and not LABEL_VALUE_RE.match(v):
            problems.append(f"{ctx.at('kubernetes.labels', k)}: {v!r} is not a valid label value")
    return problems


def check_gpu_options(ctx: Ctx) -> list[str]:
    """NVIDIA options only on GPU sites (the builder defaults do not count).

    Options inherited from a layer below the one that turned the GPU off are inert, not an
    error: ``--set gpu.enabled=false`` makes a CPU variant of a GPU site.
    """
    if ctx.get("gpu.enabled") is True:
        return []
    off = ctx.rank(ctx.sources.get(("gpu", "enabled"), DEFAULTS_SOURCE))
    return [
        f"{src}: {'.'.join(path)}: NVIDIA options are set but gpu.enabled is false "
        "(set gpu.enabled: true, or remove them: gpu: {nvidia: null})"
        for path, src in ctx.sources.items()
        if path[:2] == ("gpu", "nvidia")
        and src != DEFAULTS_SOURCE
        and len(path) > 2
        and ctx.rank(src) >= off
    ]


# The NVIDIA container toolkit release that brought what the GPU nodes rely on: "auto" mode
# resolving to jit-cdi and the low-level runtime candidates ["runc", "crun"] (UPSTREAM.md,
# NVIDIA, "toolkit version"); 1.17.x resolves "auto" to legacy and tries docker-runc first.
TOOLKIT_MIN = (1, 18, 0)


def check_toolkit_version(ctx: Ctx) -> list[str]:
    """A GPU site's container toolkit is 1.18.0 or newer."""
    dotted = "gpu.nvidia.container_toolkit_version"
    value = ctx.get(dotted)
    if ctx.get("gpu.enabled") is not True or value is None:
        return []
    if tuple(dotted.split(".")) in ctx.failed:
        return []
    have = tuple(int(x) for x in str(value).split("-")[0].split("."))
    if have >= TOOLKIT_MIN:
        return []
    need = ".".join(map(str, TOOLKIT_MIN))
    return [
        f"{ctx.at(dotted)}: NVIDIA container toolkit {value} is older than {need}: before "
        f'{need} its runtime resolves mode "auto" to legacy (not jit-cdi) and looks for '
        "docker-runc first (UPSTREAM.md, NVIDIA)"
    ]


def check_target_needs(ctx: Ctx) -> list[str]:
    """What each target needs: iso a verifiable base ISO, ami a region."""
    target = ctx.get("target")
    problems: list[str] = []
    if target == "iso":
        base = ctx.get("iso.base") or {}
        if not base.get("url"):
            problems.append(f"{ctx.at('iso.base.url')}: required for target iso")
        elif not (base.get("sha256") or base.get("sha256sums_url")):
            problems.append(
                f"{ctx.at('iso.base.sha256')}: target iso needs a pinned "
                "sha256 or a sha256sums_url to verify the base ISO"
            )
    if target == "ami" and not ctx.get("aws.region"):
        problems.append(f"{ctx.at('aws.region')}: required for target ami")
    return problems


def check_ami_sharing(ctx: Ctx) -> list[str]:
    """The AMI is always encrypted (``encrypt_boot = true``); the Packer amazon plugin
    refuses to share (``ami_users``) an AMI encrypted with the default KMS key, so sharing
    needs a customer-managed key (UPSTREAM.md, Packer). ``kms_key_id`` covers the build
    region only: each copy in ``ami_regions`` is encrypted with that region's default key
    unless ``region_kms_key_ids`` names one — Packer accepts that, and the accounts the AMI
    is shared with cannot launch those copies. Once the map is set, Packer wants exactly
    the regions of ``ami_regions`` in it."""
    users = ctx.get("aws.ami_users")
    regions = [r for r in ctx.get("aws.ami_regions") or [] if isinstance(r, str)]
    keys = ctx.get("aws.region_kms_key_ids")
    keys = (
        keys
        if isinstance(keys, Mapping) and ("aws", "region_kms_key_ids") not in ctx.failed
        else {}
    )
    build = ctx.get("aws.region")
    problems = []
    if keys:
        missing = [r for r in regions if r not in keys]
        if missing:
            problems.append(
                f"{ctx.at('aws.region_kms_key_ids')}: no key for {', '.join(missing)} (in "
                "aws.ami_regions): once this is set, every region of aws.ami_regions needs "
                "an entry ('' for that region's default key, when the AMI is not shared)"
            )
        problems += [
            f"{ctx.at('aws.region_kms_key_ids')}: {r} is not in aws.ami_regions (a key "
            "only for a region the AMI is copied to)"
            for r in sorted(set(keys) - set(regions))
        ]
    if users and not (keys.get(build) or ctx.get("aws.kms_key_id")):
        problems.append(
            f"{ctx.at('aws.ami_users')}: sharing the AMI needs aws.kms_key_id (a "
            "customer-managed KMS key): the AMI is encrypted, and one encrypted with the "
            "default key cannot be shared"
        )
    copies = [r for r in dict.fromkeys(regions) if r != build and not keys.get(r)]
    if users and copies:
        problems.append(
            f"{ctx.at('aws.ami_users')}: the copies in {', '.join(copies)} would be "
            "encrypted with those regions' default KMS keys, which cannot be shared: set "
            "aws.region_kms_key_ids with a customer-managed key for each"
        )
    return problems


CROSS_CHECKS: tuple[Callable[[Ctx], list[str]], ...] = (
    check_versions,
    check_networks,
    check_hub_overlay_ip,
    check_static_network,
    check_required_sysctls,
    check_labels,
    check_gpu_options,
    check_toolkit_version,
    check_target_needs,
    check_ami_sharing,
)


# ---------------------------------------------------------------------------------------
# checks that read referenced files


def check_ca_pin(
    data: Mapping[str, Any],
    sources: Mapping[Path_, str],
    base_dirs: Mapping[str, Path],
    site: str,
) -> list[str]:
    """The hub CA certificate (``enrollment.ca_cert``) must match ``enrollment.ca_pin``."""
    enrollment = data.get("enrollment")
    if not isinstance(enrollment, Mapping):
        return []
    ref, want = enrollment.get("ca_cert"), enrollment.get("ca_pin")
    if not (isinstance(ref, str) and ref.startswith("file:") and isinstance(want, str)):
        return []  # a malformed reference is the schema's to report

    def where(dotted: str) -> str:
        return f"{source_for(sources, tuple(dotted.split('.')), site)}: {dotted}"

    src = source_for(sources, ("enrollment", "ca_cert"), site)
    path = file_ref_path(ref, base_dirs.get(src, Path.cwd()))
    try:
        der = pem_to_der(path.read_text())
    except OSError as exc:
        return [f"{where('enrollment.ca_cert')}: cannot read {path}: {exc.strerror}"]
    except ValueError as exc:
        return [f"{where('enrollment.ca_cert')}: {path}: {exc}"]
    pin = "sha256:" + hashlib.sha256(der).hexdigest()
    if pin != want:
        return [
            f"{where('enrollment.ca_pin')}: does not match the CA "
            f"certificate {display_path(path)} ({pin})"
        ]
    return []


def pem_to_der(text: str) -> bytes:
    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", text, re.S)
    if not m:
        raise ValueError("not a PEM certificate")
    return base64.b64decode("".join(m.group(1).split()))
