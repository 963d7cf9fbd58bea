"""Site profiles: load -> layer -> validate -> freeze.

Layering, lowest first: builder defaults (``builder/site/defaults.yaml``) <
``profiles/base.yaml`` < ``profiles/<site>.yaml`` (following ``extends:`` chains) <
``--set key=value``. Mappings deep-merge; scalars and lists replace.

Every value remembers which layer set it, so a problem is reported against the file
that holds it: ``profiles/onprem.yaml: wireguard.overlay_cidr: …``. All problems are
collected (``checks.py``) and raised together as one ``ValidationError``. A valid profile
carries its settings as typed sections (``Profile.spec``, see ``model.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from builder.errors import UsageError, ValidationError
from builder.paths import PROFILES_DIR, SITE_DIR

from . import yamlload
from .checks import (
    REQUIRED_MODULES,
    REQUIRED_SYSCTLS,
    SECRET_KEYS,
    VERSION_RE,
    check_ca_pin,
    validate_data,
)
from .common import (
    DEFAULTS_SOURCE,
    SET_SOURCE,
    Path_,
    did_you_mean,
    display_path,
    file_ref_path,
    kind,
    source_for,
)
from .model import SiteSpec, build_spec

DEFAULTS_FILE = SITE_DIR / "defaults.yaml"

__all__ = [
    "DEFAULTS_SOURCE",
    "SET_SOURCE",
    "Layer",
    "Profile",
    "collect_layers",
    "display_path",
    "list_sites",
    "load_profile",
    "merge_layers",
    "parse_overrides",
    "validate_data",
]


def default_profiles_dir() -> Path:
    env = os.environ.get("BUILDER_PROFILES")
    if env:
        return Path(env)
    cwd = Path.cwd() / "profiles"
    return cwd if cwd.is_dir() else PROFILES_DIR


@dataclass(frozen=True)
class Layer:
    source: str  # shown in messages: a file path, "builder defaults" or "--set"
    data: Mapping[str, Any]
    base_dir: Path  # where file: references in this layer resolve
    lines: Mapping[Path_, int] = field(default_factory=dict)  # key path -> line in the file


def _minor(version: str) -> str:
    m = VERSION_RE.match(version)
    assert m, version  # checked by checks.check_versions before a Profile exists
    return f"{m['major']}.{m['minor']}"


@dataclass(frozen=True)
class Profile:
    """A validated, merged, immutable site profile.

    ``spec`` holds the settings as typed sections; ``data`` the same merged mapping
    (frozen) for the things that are about the document itself: ``masked()`` output,
    provenance (``where``) and generic ``get`` by dotted key.
    """

    site: str
    data: Mapping[str, Any]
    sources: Mapping[Path_, str]  # key path -> layer source that set it
    base_dirs: Mapping[str, Path]  # layer source -> directory for file: refs
    layers: tuple[str, ...]
    input_hash: str
    spec: SiteSpec

    def get(self, dotted: str, default: Any = None) -> Any:
        """Generic access by dotted key (``--set`` style) for tools and tests that name
        keys; the builder itself reads the typed ``spec``."""
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
        return source_for(self.sources, tuple(dotted.split(".")), self.site)

    def where(self, dotted: str) -> str:
        """``file: key.path`` for messages about a key."""
        return f"{self.source_of(dotted)}: {dotted}"

    @property
    def kubernetes_minor(self) -> str:
        return _minor(self.spec.kubernetes.version)

    @property
    def crio_minor(self) -> str:
        return _minor(self.spec.crio.version)

    @property
    def modules(self) -> list[str]:
        out = list(REQUIRED_MODULES)
        out += [m for m in self.spec.kernel.modules if m not in out]
        return out

    @property
    def sysctls(self) -> dict[str, str]:
        out = {k: str(v) for k, v in REQUIRED_SYSCTLS.items()}
        for k, v in sorted(self.spec.kernel.sysctls.items()):
            out.setdefault(k, str(v))
        return out

    def resolve_file(self, dotted: str) -> Path:
        """Path of a ``file:`` reference, relative to the file of the layer that set it."""
        ref = self.get(dotted)
        assert isinstance(ref, str) and ref.startswith("file:")
        return file_ref_path(ref, self.base_dirs.get(self.source_of(dotted), Path.cwd()))

    def resolve_secret(self, dotted: str) -> str | None:
        """The secret the reference at ``dotted`` points to, or None; raises UsageError
        naming the key."""
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

    def origins(self) -> list[tuple[str, Any, str]]:
        """(dotted key, value (secrets masked), the layer that set it) for every leaf value,
        in key order: ``builder show SITE --origin``."""
        out: list[tuple[str, Any, str]] = []

        def walk(node: Any, path: tuple[str, ...]) -> None:
            if isinstance(node, Mapping) and node:
                for k in sorted(node):
                    walk(node[k], (*path, str(k)))
            else:
                dotted = ".".join(path)
                src = "builder" if path == ("site",) else self.source_of(dotted)
                out.append((dotted, node, src))

        walk(self.masked(), ())
        return out

    def demo_credentials(self) -> list[str]:
        """The demo hub credentials of the example profiles this profile still carries."""
        from .demo import demo_credentials

        return demo_credentials(self.spec.enrollment.ca_pin, self.spec.wireguard.hub_public_key)

    def masked(self) -> dict[str, Any]:
        """The merged profile as plain data, secret references masked."""
        data = thaw(self.data)
        for key in SECRET_KEYS:
            parts = key.split(".")
            node = data
            for p in parts[:-1]:
                node = node.get(p) or {}
            if node.get(parts[-1]) is not None:
                ref_kind = str(node[parts[-1]]).split(":", 1)[0]
                node[parts[-1]] = f"{ref_kind}:***"
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


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[Path_, int]]:
    """The profile file's data and the line of each key path."""
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
        raise ValidationError([f"{shown}: the top level must be a mapping, not {kind(data)}"])
    bad = list(_non_text_keys(data, ()))
    if bad:
        raise ValidationError(
            [
                f"{shown}: {'.'.join((*path, repr(key)))}: a key must be text, "
                f"not {kind(key)} (quote it)"
                for path, key in bad
            ]
        )
    return data, yamlload.key_lines(text)


def _non_text_keys(value: Any, path: Path_) -> Iterable[tuple[Path_, Any]]:
    """Mapping keys YAML read as something other than text (``~: 1``, ``1.34: x``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                yield path, k
            else:
                yield from _non_text_keys(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_text_keys(v, (*path, str(i)))


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
        hint = did_you_mean(site, known) or (f"known sites: {', '.join(known)}" if known else None)
        raise UsageError(f"{display_path(path)}: no such site profile", hint=hint)

    chain: list[Layer] = []
    seen: list[str] = []
    current: Path | None = path
    while current is not None:
        if current.stem in seen:
            cycle = " -> ".join([*seen, current.stem])
            raise ValidationError([f"{display_path(current)}: extends: cycle: {cycle}"])
        seen.append(current.stem)
        data, lines = _read_yaml(current)
        chain.append(Layer(display_path(current), data, current.parent, MappingProxyType(lines)))
        parent = data.get("extends")
        if parent is None:
            # base.yaml sits under every site that does not name its own parent chain to it
            base = pdir / "base.yaml"
            current = base if base.is_file() and current != base and "base" not in seen else None
        elif not isinstance(parent, str):
            raise ValidationError(
                [f"{display_path(current)}: extends: must be a profile name, not {kind(parent)}"]
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
    # our own file: libyaml's parser when PyYAML has it (same data, a tenth of the time)
    fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    defaults = Layer(DEFAULTS_SOURCE, yaml.load(DEFAULTS_FILE.read_text(), Loader=fast), SITE_DIR)
    layers = [defaults, *reversed(chain)]
    over = parse_overrides(overrides)
    if over:
        layers.append(Layer(SET_SOURCE, over, Path.cwd()))
    return layers


def merge_layers(layers: list[Layer]) -> tuple[dict[str, Any], dict[Path_, str]]:
    """Deep-merge mappings; scalars and lists replace; ``null`` removes. Returns data and
    provenance.

    A ``null`` in a profile or ``--set`` removes the key (and everything under it) that the
    layers below set, as in Helm values and kustomize patches: ``gpu: {nvidia: null}`` drops
    an inherited NVIDIA section. A removed key the builder defaults know takes its default
    again (source ``builder defaults``); the defaults layer's own nulls are plain values.
    """
    data: dict[str, Any] = {}
    sources: dict[Path_, str] = {}
    for layer in layers:
        _merge_into(data, layer.data, (), layer.source, sources)
    for layer in layers:
        if layer.source == DEFAULTS_SOURCE:
            _fill_missing(data, layer.data, (), sources)
    data.pop("extends", None)
    return data, sources


def _fill_missing(
    dst: dict[str, Any], defaults: Mapping[str, Any], prefix: Path_, sources: dict[Path_, str]
) -> None:
    for key, value in defaults.items():
        path = (*prefix, str(key))
        if key not in dst:
            dst[key] = copy.deepcopy(value)
            _record(value, path, DEFAULTS_SOURCE, sources)
        elif isinstance(value, Mapping) and isinstance(dst[key], dict):
            _fill_missing(dst[key], value, path, sources)


def _merge_into(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    prefix: Path_,
    source: str,
    sources: dict[Path_, str],
) -> None:
    for key, value in src.items():
        path = (*prefix, str(key))
        if value is None and source != DEFAULTS_SOURCE:  # null removes what was inherited
            dst.pop(key, None)
            for p in [p for p in sources if p[: len(path)] == path]:
                del sources[p]
            continue
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


# ---------------------------------------------------------------------------------------
# loading


def load_profile(
    site: str, profiles_dir: Path | None = None, overrides: Iterable[str] = ()
) -> Profile:
    """Load, layer and validate a site; raise ValidationError listing every problem."""
    layers = collect_layers(site, profiles_dir, overrides)
    data, sources = merge_layers(layers)
    site_file = layers[-2].source if layers[-1].source == SET_SOURCE else layers[-1].source
    base_dirs = {layer.source: layer.base_dir for layer in layers}
    problems = validate_data(
        data,
        sources,
        site_file,
        [layer.source for layer in layers],
        {layer.source: layer.lines for layer in layers},
    )
    problems += check_ca_pin(data, sources, base_dirs, site)
    if problems:
        raise ValidationError(problems, hint="fix the keys above; nothing was written")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    pin_files = _referenced_file_digests(data, sources, base_dirs)
    input_hash = hashlib.sha256((canonical + pin_files).encode()).hexdigest()
    return Profile(
        site=site,
        data=freeze(data),
        sources=MappingProxyType(dict(sources)),
        base_dirs=MappingProxyType(base_dirs),
        layers=tuple(layer.source for layer in layers),
        input_hash=input_hash,
        spec=build_spec(data, layers[0].data),
    )


def _referenced_file_digests(
    data: Mapping[str, Any], sources: Mapping[Path_, str], base_dirs: Mapping[str, Path]
) -> str:
    """Digest of non-secret files the profile references, so their content is an input."""
    ref = (data.get("enrollment") or {}).get("ca_cert")
    if not isinstance(ref, str) or not ref.startswith("file:"):
        return ""
    src = source_for(sources, ("enrollment", "ca_cert"), "")
    path = file_ref_path(ref, base_dirs.get(src, Path.cwd()))
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


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
