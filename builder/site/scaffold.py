"""``builder init NEW --from SITE``: a commented site profile with SITE's settings.

The new profile stands on its own: it holds every value SITE has that does not come from the
builder defaults (its own and the inherited ones), each top-level section headed by the file
that set it, and ``file:`` references made absolute (a relative one would resolve from the
new file's directory). It is written to ``--profiles DIR``, else ``$BUILDER_PROFILES``, else
``./profiles`` (created) — never into the builder's own example profiles — and must load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BuilderError, UsageError
from builder.fsutil import atomic_write

from .common import DEFAULTS_SOURCE, display_path, file_ref_path, source_for
from .profile import Profile, load_profile, thaw


def scaffold_dir(profiles_dir: Path | None) -> Path:
    if profiles_dir is not None:
        return profiles_dir
    env = os.environ.get("BUILDER_PROFILES")
    return Path(env) if env else Path.cwd() / "profiles"


def _own(profile: Profile, node: Any, path: tuple[str, ...]) -> Any:
    """``node`` without what the builder defaults set; file: references made absolute."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            kept = _own(profile, v, (*path, str(k)))
            if kept is not _DROP:
                out[k] = kept
        return out if out or not path else _DROP
    src = source_for(profile.sources, path, profile.site_file)
    if src == DEFAULTS_SOURCE:
        return _DROP
    if isinstance(node, str) and node.startswith("file:"):
        base = profile.base_dirs.get(src, Path.cwd())
        return f"file:{file_ref_path(node, base).resolve()}"
    return node


_DROP = object()


def render_scaffold(new: str, profile: Profile) -> str:
    data = _own(profile, thaw(profile.data), ())
    lines = [
        f"# {new}: site profile scaffolded by `builder init {new} --from {profile.site}`.",
        f"# It holds {profile.site}'s settings (the builder defaults are left out): change what",
        "# differs. `null` removes a key (its builder default applies again); secrets stay",
        "# references (env:NAME, file:PATH). Check it: `builder show " + new + " --origin`,",
        f"# `builder validate {new}`. Schema: builder/site/schema/profile.schema.json",
    ]
    for key, value in data.items():
        src = source_for(profile.sources, (str(key),), profile.site_file)
        lines += ["", f"# from {src}"]
        body = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False)
        lines += body.rstrip("\n").splitlines()
    return "\n".join(lines) + "\n"


def scaffold(new: str, from_site: str, profiles_dir: Path | None = None) -> Path:
    """Write ``<dir>/<new>.yaml`` from ``from_site``; returns its path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", new) or new == "base":
        raise UsageError(f"{new!r}: not a valid site name (letters, digits, _ . -; not base)")
    profile = load_profile(from_site, profiles_dir)
    target = scaffold_dir(profiles_dir) / f"{new}.yaml"
    if target.exists():
        raise UsageError(
            f"{display_path(target)}: exists; refusing to overwrite it",
            hint="pick another name, or edit that file",
        )
    atomic_write(target, render_scaffold(new, profile))
    try:
        load_profile(new, target.parent)
    except BuilderError:
        target.unlink()
        raise
    return target
