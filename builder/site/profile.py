"""Site profiles: load -> layer -> validate -> freeze.

Layering, lowest first: builder defaults (``builder/defaults.yaml``) <
``profiles/base.yaml`` < ``profiles/<site>.yaml`` (following ``extends:`` chains) <
``--set key=value``. Mappings deep-merge; scalars and lists replace.

Every value remembers which layer set it, so a problem is reported against the file
that holds it: ``profiles/onprem.yaml: wireguard.overlay_cidr: …``. All problems are
collected and raised together as one ``ValidationError``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from builder.errors import UsageError, ValidationError
from builder.paths import PROFILES_DIR, SCHEMA_DIR, SITE_DIR

from . import yamlload

DEFAULTS_FILE = SITE_DIR / "defaults.yaml"
SCHEMA_FILE = SCHEMA_DIR / "profile.schema.json"
DEFAULTS_SOURCE = "builder defaults"
SET_SOURCE = "--set"

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

Path_ = tuple[str, ...]


def default_profiles_dir() -> Path:
    env = os.environ.get("BUILDER_PROFILES")
    if env:
        return Path(env)
    cwd = Path.cwd() / "profiles"
    return cwd if cwd.is_dir() else PROFILES_DIR


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Layer:
    source: str  # shown in messages: a file path, "builder defaults" or "--set"
    data: Mapping[str, Any]
    base_dir: Path  # where file: references in this layer resolve


@dataclass(frozen=True)
class Profile:
    """A validated, merged, immutable site profile."""

    site: str
    data: Mapping[str, Any]
    sources: Mapping[Path_, str]  # key path -> layer source that set it
    base_dirs: Mapping[str, Path]  # layer source -> directory for file: refs
    layers: tuple[str, ...]
    input_hash: str

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def site_file(self) -> str:
        """The source (display path) of the site's own profile file."""
        return next(src for src in reversed(self.layers) if src != SET_SOURCE)

    @property
    def secrets_dir(self) -> Path:
        """``<profiles dir>/.secrets``: where per-site generated secrets (the salt) live."""
        return self.base_dirs.get(self.site_file, Path.cwd()) / ".secrets"

    def source_of(self, dotted: str) -> str:
        return _source_for(self.sources, tuple(dotted.split(".")), self.site)

    def where(self, dotted: str) -> str:
        """``file: key.path`` for messages about a key."""
        return f"{self.source_of(dotted)}: {dotted}"

    @property
    def kubernetes_minor(self) -> str:
        m = VERSION_RE.match(self.get("kubernetes.version"))
        assert m
        return f"{m['major']}.{m['minor']}"

    @property
    def crio_minor(self) -> str:
        m = VERSION_RE.match(self.get("crio.version"))
        assert m
        return f"{m['major']}.{m['minor']}"

    @property
    def modules(self) -> list[str]:
        out = list(REQUIRED_MODULES)
        out += [m for m in self.get("kernel.modules", ()) if m not in out]
        return out

    @property
    def sysctls(self) -> dict[str, str]:
        out = {k: str(v) for k, v in REQUIRED_SYSCTLS.items()}
        for k, v in sorted(self.get("kernel.sysctls", {}).items()):
            out.setdefault(k, str(v))
        return out

    def resolve_file(self, dotted: str) -> Path:
        """Path of a ``file:`` reference, relative to the file of the layer that set it."""
        ref = self.get(dotted)
        assert isinstance(ref, str) and ref.startswith("file:")
        path = Path(os.path.expanduser(ref[5:]))
        if not path.is_absolute():
            path = self.base_dirs.get(self.source_of(dotted), Path.cwd()) / path
        return path

    def resolve_secret(self, dotted: str) -> str | None:
        """The secret a reference points to, or None; raises UsageError naming the key."""
        ref = self.get(dotted)
        if ref is None:
            return None
        if ref.startswith("env:"):
            name = ref[4:]
            value = os.environ.get(name)
            if not value:
                raise UsageError(
                    f"{self.where(dotted)}: environment variable {name} is not set",
                    hint=f"export {name}=… before building, or point the key at file:PATH",
                )
            return value
        path = self.resolve_file(dotted)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"{self.where(dotted)}: cannot read {path}: {exc.strerror}") from None

    def masked(self) -> dict[str, Any]:
        """The merged profile as plain data, secret references masked."""
        data = thaw(self.data)
        for key in SECRET_KEYS:
            parts = key.split(".")
            node = data
            for p in parts[:-1]:
                node = node.get(p) or {}
            if node.get(parts[-1]) is not None:
                kind = str(node[parts[-1]]).split(":", 1)[0]
                node[parts[-1]] = f"{kind}:***"
        data["site"] = self.site
        return data


# ---------------------------------------------------------------------------------------
# loading and layering


def list_sites(profiles_dir: Path | None = None) -> list[tuple[str, str, str]]:
    """(site, target, description) for every profile in the directory, base excluded."""
    pdir = profiles_dir or default_profiles_dir()
    if not pdir.is_dir():
        raise UsageError(f"{display_path(pdir)}: no such profiles directory")
    out = []
    for path in sorted(pdir.glob("*.yaml")):
        if path.stem == "base":
            continue
        data, _ = merge_layers(collect_layers(path.stem, pdir))
        out.append((path.stem, str(data.get("target", "")), str(data.get("description", ""))))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    shown = display_path(path)
    try:
        text = yamlload.read_text(path)
        data = yamlload.load(text)
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{shown}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError([f"{shown}: not UTF-8 text (byte {exc.start})"]) from None
    except yamlload.DocumentTooLarge as exc:
        raise ValidationError([f"{shown}: {exc}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValidationError([f"{shown}: {where}{exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ValidationError([f"{shown}: {exc}"]) from None
    if data is None:
        raise ValidationError(
            [f"{shown}: the profile is empty"],
            hint="a profile names at least its target (target: iso|ami|qcow2) or its parent "
            "(extends: NAME); see profiles/base.yaml",
        )
    if not isinstance(data, dict):
        raise ValidationError([f"{shown}: the top level must be a mapping, not {_kind(data)}"])
    return data


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested mapping; values are YAML scalars/flows."""
    out: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            problems.append(f"{SET_SOURCE}: {item!r}: expected KEY=VALUE with a dotted KEY")
            continue
        try:
            value = yamlload.load(raw) if raw.strip() else ""
        except yamlload.DocumentTooLarge as exc:
            problems.append(f"{SET_SOURCE}: {key}: {exc}")
            continue
        except yaml.YAMLError:
            value = raw
        if isinstance(value, float):
            value = raw.strip()  # "1.35" is a version, never a float, in our profiles
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        node[parts[-1]] = value
    if problems:
        raise ValidationError(problems)
    return out


def collect_layers(
    site: str, profiles_dir: Path | None = None, overrides: Iterable[str] = ()
) -> list[Layer]:
    pdir = profiles_dir or default_profiles_dir()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", site):
        raise UsageError(f"{site!r}: not a valid site name")
    path = pdir / f"{site}.yaml"
    if not path.is_file():
        known = [p.stem for p in sorted(pdir.glob("*.yaml"))] if pdir.is_dir() else []
        hint = _did_you_mean(site, known) or (f"known sites: {', '.join(known)}" if known else None)
        raise UsageError(f"{display_path(path)}: no such site profile", hint=hint)

    chain: list[Layer] = []
    seen: list[str] = []
    current: Path | None = path
    while current is not None:
        if current.stem in seen:
            cycle = " -> ".join([*seen, current.stem])
            raise ValidationError([f"{display_path(current)}: extends: cycle: {cycle}"])
        seen.append(current.stem)
        data = _read_yaml(current)
        chain.append(Layer(display_path(current), data, current.parent))
        parent = data.get("extends")
        if parent is None:
            # base.yaml sits under every site that does not name its own parent chain to it
            base = pdir / "base.yaml"
            current = base if base.is_file() and current != base and "base" not in seen else None
        elif not isinstance(parent, str):
            raise ValidationError(
                [f"{display_path(current)}: extends: must be a profile name, not {_kind(parent)}"]
            )
        else:
            nxt = pdir / f"{parent}.yaml"
            if not nxt.is_file():
                raise ValidationError(
                    [
                        f"{display_path(current)}: extends: no profile named {parent!r} in "
                        f"{display_path(pdir)}"
                    ]
                )
            current = nxt
    defaults = Layer(DEFAULTS_SOURCE, yaml.safe_load(DEFAULTS_FILE.read_text()), SITE_DIR)
    layers = [defaults, *reversed(chain)]
    over = parse_overrides(overrides)
    if over:
        layers.append(Layer(SET_SOURCE, over, Path.cwd()))
    return layers


def merge_layers(layers: list[Layer]) -> tuple[dict[str, Any], dict[Path_, str]]:
    """Deep-merge mappings; scalars and lists replace. Returns data and provenance."""
    data: dict[str, Any] = {}
    sources: dict[Path_, str] = {}
    for layer in layers:
        _merge_into(data, layer.data, (), layer.source, sources)
    data.pop("extends", None)
    return data, sources


def _merge_into(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    prefix: Path_,
    source: str,
    sources: dict[Path_, str],
) -> None:
    for key, value in src.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge_into(dst[key], value, path, source, sources)
            sources[path] = source
        else:
            dst[key] = copy.deepcopy(value)
            # the whole subtree now comes from this layer
            for p in [p for p in sources if p[: len(path)] == path]:
                del sources[p]
            _record(value, path, source, sources)


def _record(value: Any, path: Path_, source: str, sources: dict[Path_, str]) -> None:
    sources[path] = source
    if isinstance(value, Mapping):
        for k, v in value.items():
            _record(v, (*path, str(k)), source, sources)


def _source_for(sources: Mapping[Path_, str], path: Path_, fallback: str) -> str:
    while path:
        if path in sources:
            return sources[path]
        path = path[:-1]
    return fallback


# ---------------------------------------------------------------------------------------
# validation


def load_profile(
    site: str, profiles_dir: Path | None = None, overrides: Iterable[str] = ()
) -> Profile:
    """Load, layer and validate a site; raise ValidationError listing every problem."""
    layers = collect_layers(site, profiles_dir, overrides)
    data, sources = merge_layers(layers)
    site_file = layers[-2].source if layers[-1].source == SET_SOURCE else layers[-1].source
    problems = validate_data(data, sources, site_file)
    base_dirs = {layer.source: layer.base_dir for layer in layers}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    pin_files = _referenced_file_digests(data, sources, base_dirs)
    input_hash = hashlib.sha256((canonical + pin_files).encode()).hexdigest()
    profile = Profile(
        site=site,
        data=freeze(data),
        sources=MappingProxyType(dict(sources)),
        base_dirs=MappingProxyType(base_dirs),
        layers=tuple(layer.source for layer in layers),
        input_hash=input_hash,
    )
    if isinstance(profile.get("enrollment.ca_pin"), str) and isinstance(
        profile.get("enrollment.ca_cert"), str
    ):
        problems += _check_files(profile)
    if problems:
        raise ValidationError(problems, hint="fix the keys above; nothing was written")
    return profile


def _referenced_file_digests(
    data: Mapping[str, Any], sources: Mapping[Path_, str], base_dirs: Mapping[str, Path]
) -> str:
    """Digest of non-secret files the profile references, so their content is an input."""
    ref = (data.get("enrollment") or {}).get("ca_cert")
    if not isinstance(ref, str) or not ref.startswith("file:"):
        return ""
    path = Path(os.path.expanduser(ref[5:]))
    if not path.is_absolute():
        src = _source_for(sources, ("enrollment", "ca_cert"), "")
        path = base_dirs.get(src, Path.cwd()) / path
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def validate_data(
    data: Mapping[str, Any], sources: Mapping[Path_, str], site_file: str
) -> list[str]:
    """Schema + cross-field checks. Returns every problem as ``file: key.path: message``."""
    problems: list[str] = []

    def where(path: Iterable[Any]) -> str:
        path = tuple(str(p) for p in path)
        dotted = ".".join(path) or "(top level)"
        return f"{_source_for(sources, path, site_file)}: {dotted}"

    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    schema_failed: set[Path_] = set()
    for err in validator.iter_errors(data):
        path = tuple(str(p) for p in err.absolute_path)
        schema_failed.add(path)
        problems.extend(_schema_messages(err, path, where))
    problems.extend(_cross_checks(data, sources, where, schema_failed))
    return sorted(set(problems))


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())  # type: ignore[no-any-return]


def _schema_messages(err: jsonschema.ValidationError, path: Path_, where: Any) -> list[str]:
    if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
        allowed = list((err.schema.get("properties") or {}).keys())
        out = []
        for key in err.instance:
            if key in allowed:
                continue
            msg = f"{where((*path, key))}: unknown key"
            guess = _did_you_mean(str(key), allowed)
            out.append(f"{msg} ({guess})" if guess else f"{msg}; allowed: {', '.join(allowed)}")
        return out
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return [f"{where((*path, missing))}: required key is missing"]
    if err.validator == "pattern":
        return [f"{where(path)}: {err.instance!r} is not in the expected form{_pattern_hint(path)}"]
    if err.validator in ("anyOf", "oneOf"):
        if path and path[-1] in {k.rsplit(".", 1)[-1] for k in SECRET_KEYS}:
            return [
                f"{where(path)}: must be a reference (env:NAME or file:PATH), "
                "never the secret itself"
            ]
        best = jsonschema.exceptions.best_match(err.context or [err])
        return (
            _schema_messages(best, tuple(str(p) for p in best.absolute_path), where)
            if best is not err
            else [f"{where(path)}: {err.message}"]
        )
    if err.validator == "type":
        return [f"{where(path)}: expected {err.validator_value}, got {_kind(err.instance)}"]
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
}


def _pattern_hint(path: Path_) -> str:
    if path and path[-1] in _PATTERN_HINTS:
        return _PATTERN_HINTS[path[-1]]
    if path[:2] == ("admin", "ssh_authorized_keys"):
        return " (an OpenSSH public key line)"
    return ""


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _cross_checks(
    data: Mapping[str, Any], sources: Mapping[Path_, str], where: Any, failed: set[Path_]
) -> list[str]:
    problems: list[str] = []

    def key(dotted: str) -> Path_:
        return tuple(dotted.split("."))

    # versions: well-formed, CRI-O minor == Kubernetes minor
    versions = {}
    for dotted in ("kubernetes.version", "crio.version"):
        value = _get(data, dotted)
        if isinstance(value, str):
            m = VERSION_RE.match(value)
            if not m:
                problems.append(
                    f"{where(key(dotted))}: {value!r} is not a version "
                    "(MAJOR.MINOR or MAJOR.MINOR.PATCH, no leading v)"
                )
            else:
                versions[dotted] = (int(m["major"]), int(m["minor"]))
    k8s, crio = versions.get("kubernetes.version"), versions.get("crio.version")
    if k8s and crio and k8s != crio:
        problems.append(
            f"{where(key('crio.version'))}: CRI-O {crio[0]}.{crio[1]} does not match "
            f"Kubernetes {k8s[0]}.{k8s[1]} (CRI-O follows the Kubernetes minor)"
        )
    if k8s and (k8s[0] != 1 or k8s[1] < 30):
        problems.append(
            f"{where(key('kubernetes.version'))}: Kubernetes {k8s[0]}.{k8s[1]} "
            "is not supported (1.30 or newer)"
        )

    # networks: parse, then no overlaps between overlay, pods, services, site LAN
    nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    for dotted in (
        "wireguard.overlay_cidr",
        "kubernetes.pod_cidr",
        "kubernetes.service_cidr",
        "network.site_lan",
    ):
        value = _get(data, dotted)
        if value is None or key(dotted) in failed:
            continue
        try:
            nets[dotted] = ipaddress.ip_network(str(value), strict=True)
        except ValueError as exc:
            problems.append(
                f"{where(key(dotted))}: {value!r} is not a network in CIDR form ({exc})"
            )
    names = list(nets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            na, nb = nets[a], nets[b]
            if na.version == nb.version and na.overlaps(nb):
                problems.append(f"{where(key(b))}: {nb} overlaps {a} ({na})")

    overlay = nets.get("wireguard.overlay_cidr")
    hub_ip = _get(data, "wireguard.hub_overlay_ip")
    if overlay is not None and hub_ip is not None:
        try:
            ip = ipaddress.ip_address(str(hub_ip))
        except ValueError:
            problems.append(
                f"{where(key('wireguard.hub_overlay_ip'))}: {hub_ip!r} is not an IP address"
            )
        else:
            if ip not in overlay:
                problems.append(
                    f"{where(key('wireguard.hub_overlay_ip'))}: {ip} is outside "
                    f"the overlay {overlay}"
                )
            elif overlay.num_addresses > 2 and ip in (
                overlay.network_address,
                overlay.broadcast_address,
            ):
                problems.append(
                    f"{where(key('wireguard.hub_overlay_ip'))}: {ip} is the "
                    f"network or broadcast address of {overlay}"
                )
        if overlay.num_addresses < 4:
            problems.append(
                f"{where(key('wireguard.overlay_cidr'))}: {overlay} leaves no addresses for nodes"
            )

    static = _get(data, "network.static")
    if isinstance(static, Mapping) and ("network", "static") not in failed:
        try:
            iface = ipaddress.ip_interface(str(static.get("address")))
            gw = ipaddress.ip_address(str(static.get("gateway")))
            if gw not in iface.network:
                problems.append(
                    f"{where(key('network.static.gateway'))}: {gw} is not in {iface.network}"
                )
        except ValueError as exc:
            problems.append(f"{where(key('network.static'))}: {exc}")

    # kernel: the required sysctls cannot be turned off
    sysctls = _get(data, "kernel.sysctls") or {}
    if isinstance(sysctls, Mapping):
        for name, want in REQUIRED_SYSCTLS.items():
            if name in sysctls and str(sysctls[name]) != str(want):
                problems.append(
                    f"{where((*key('kernel.sysctls'), name))}: must be {want} on a Kubernetes node"
                )

    # labels and taints
    labels = _get(data, "kubernetes.labels") or {}
    if isinstance(labels, Mapping):
        for k, v in labels.items():
            if not LABEL_KEY_RE.match(str(k)) or len(str(k).split("/")[-1]) > 63:
                problems.append(f"{where((*key('kubernetes.labels'), k))}: not a valid label key")
            if isinstance(v, str) and not LABEL_VALUE_RE.match(v):
                problems.append(
                    f"{where((*key('kubernetes.labels'), k))}: {v!r} is not a valid label value"
                )

    # GPU options only on GPU sites
    gpu_on = _get(data, "gpu.enabled") is True
    if not gpu_on:
        for path, src in sources.items():
            if path[:2] == ("gpu", "nvidia") and src != DEFAULTS_SOURCE and len(path) > 2:
                problems.append(
                    f"{src}: {'.'.join(path)}: NVIDIA options are set but "
                    "gpu.enabled is false (set gpu.enabled: true or drop them)"
                )

    # target-specific requirements
    target = _get(data, "target")
    if target == "iso":
        base = _get(data, "iso.base") or {}
        if not base.get("url"):
            problems.append(f"{where(key('iso.base.url'))}: required for target iso")
        elif not (base.get("sha256") or base.get("sha256sums_url")):
            problems.append(
                f"{where(key('iso.base.sha256'))}: target iso needs a pinned "
                "sha256 or a sha256sums_url to verify the base ISO"
            )
    if target == "ami" and not _get(data, "aws.region"):
        problems.append(f"{where(key('aws.region'))}: required for target ami")
    return problems


def _check_files(profile: Profile) -> list[str]:
    """Checks that read referenced files: the hub CA must match its pin."""
    problems: list[str] = []
    if profile.get("enrollment.ca_cert"):
        path = profile.resolve_file("enrollment.ca_cert")
        try:
            der = pem_to_der(path.read_text())
        except OSError as exc:
            problems.append(
                f"{profile.where('enrollment.ca_cert')}: cannot read {path}: {exc.strerror}"
            )
        except ValueError as exc:
            problems.append(f"{profile.where('enrollment.ca_cert')}: {path}: {exc}")
        else:
            pin = "sha256:" + hashlib.sha256(der).hexdigest()
            if pin != profile.get("enrollment.ca_pin"):
                problems.append(
                    f"{profile.where('enrollment.ca_pin')}: does not match the CA "
                    f"certificate {display_path(path)} ({pin})"
                )
    return problems


def pem_to_der(text: str) -> bytes:
    import base64

    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", text, re.S)
    if not m:
        raise ValueError("not a PEM certificate")
    return base64.b64decode("".join(m.group(1).split()))


# ---------------------------------------------------------------------------------------
# freezing


def freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value
