"""``dist/<site>/``: the one writer and reader of ``manifest.json`` and ``SHA256SUMS``.

Every target (iso, ami, qcow2) records its build the same way (schema 1):

```
{
  "schema": 1,
  "tool": "nodeforge", "site": "onprem", "target": "iso",
  "image_name": "...", "profile_hash": "...", "render_input_hash": "...",
  "builder_version": "...", "builder_commit": "...",
  "source_date_epoch": 1767225600,          # the build time; never the wall clock
  "versions": {"ubuntu": ..., "kubernetes": ..., "cri-o": ...,
               "nvidia-driver": ..., "nvidia-container-toolkit": ...,   # GPU sites
               "packer": ...},                                          # Packer targets
  "artifacts": [                            # sorted by (type, region, name)
    {"type": "iso" | "qcow2", "name": FILE, "sha256": HEX, "size": BYTES},
    {"type": "ami", "region": REGION, "ami_id": AMI}
  ],
  ...target details: "cache_key", "base", "iso" (iso); "packer" (ami/qcow2)
}
```

The shared header comes from the rendered build tree's own ``manifest.json`` (what
``render_site`` wrote), so it is the same facts the tree was rendered from. Output is
deterministic: sorted keys and artifacts, times only from SOURCE_DATE_EPOCH (via the
render). Both files are written atomically; ``SHA256SUMS`` lists the file artifacts in
``sha256sum`` text format, sorted by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import TOOL
from .errors import BuilderError
from .fsutil import atomic_write

SCHEMA = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
FILE_TYPES = ("iso", "qcow2")  # artifacts that are files in dist/<site>/
# what the header takes from the rendered tree's manifest.json, under its name here
_FROM_TREE = {
    "site": "site",
    "image_name": "image_name",
    "profile_hash": "profile_hash",
    "render_input_hash": "input_hash",
    "builder_version": "builder_version",
    "builder_commit": "builder_commit",
    "source_date_epoch": "source_date_epoch",
    "versions": "versions",
}


def tree_record(tree: Path) -> dict[str, Any]:
    """The rendered tree's ``manifest.json`` (written by ``builder.site.render``)."""
    path = tree / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BuilderError(
            f"{path}: missing: not a rendered build tree", hint="render it: builder render SITE"
        ) from None
    except (OSError, ValueError) as exc:
        raise BuilderError(f"{path}: cannot read the build tree's manifest: {exc}") from None
    if not isinstance(data, dict):
        raise BuilderError(f"{path}: not a build tree manifest")
    return data


def _artifact_key(art: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(art.get("type", "")), str(art.get("region", "")), str(art.get("name", "")))


def manifest(
    tree: Mapping[str, Any],
    target: str,
    artifacts: Iterable[Mapping[str, Any]],
    *,
    versions: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest document: the shared header from ``tree`` (a ``tree_record``), the
    sorted ``artifacts``, extra ``versions`` and target ``details``."""
    missing = [src for src in _FROM_TREE.values() if src not in tree]
    if missing:
        raise BuilderError(f"the build tree's manifest lacks {', '.join(missing)}")
    doc: dict[str, Any] = {"schema": SCHEMA, "tool": TOOL, "target": target}
    doc.update({key: tree[src] for key, src in _FROM_TREE.items()})
    doc["versions"] = {**tree["versions"], **(versions or {})}
    arts = [dict(a) for a in artifacts]
    for art in arts:
        if art.get("type") in FILE_TYPES and (
            not isinstance(art.get("name"), str) or "/" in art["name"]
        ):
            raise BuilderError(f"artifact {art!r}: a file artifact needs a plain file name")
    doc["artifacts"] = sorted(arts, key=_artifact_key)
    for key, value in (details or {}).items():
        if key in doc:
            raise BuilderError(f"manifest detail {key!r} would replace a header field")
        doc[key] = value
    return doc


def sums_text(doc: Mapping[str, Any]) -> str:
    """``SHA256SUMS`` for a manifest: its file artifacts, sorted by name."""
    files = sorted(
        (a["name"], a["sha256"]) for a in doc["artifacts"] if a.get("type") in FILE_TYPES
    )
    return "".join(f"{digest}  {name}\n" for name, digest in files)


def write(dist_dir: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` and ``SHA256SUMS`` into ``dist_dir`` atomically."""
    path = atomic_write(dist_dir / MANIFEST, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    atomic_write(dist_dir / SUMS, sums_text(doc))
    return path


def read(dist_dir: Path) -> dict[str, Any] | None:
    """``dist_dir/manifest.json`` of this schema, or None (missing, unreadable, other)."""
    try:
        data = json.loads((dist_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    if not isinstance(data.get("artifacts"), list):
        return None
    return data


def artifact_path(dist_dir: Path, target: str) -> Path | None:
    """The file the last build of ``target`` recorded in ``dist_dir``, if it is still there."""
    data = read(dist_dir)
    if data is None or data.get("target") != target:
        return None
    for art in data["artifacts"]:
        if not isinstance(art, dict) or art.get("type") != target:
            continue
        name = art.get("name")
        if isinstance(name, str) and name and "/" not in name and not name.startswith("."):
            path = dist_dir / name
            if path.is_file():
                return path
    return None
