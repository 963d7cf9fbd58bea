"""Where things are: the package, the checkout it runs from, and the one cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from . import TOOL

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SITE_DIR = PACKAGE_DIR / "site"
SCHEMA_DIR = SITE_DIR / "schema"
NODE_DIR = PACKAGE_DIR / "node"
TEMPLATES_DIR = REPO_DIR / "cloud-init"
PACKER_DIR = REPO_DIR / "packer"
SCRIPTS_DIR = PACKER_DIR / "scripts"
PROFILES_DIR = REPO_DIR / "profiles"


def cache_dir() -> Path:
    """The one cache root: ``$BUILDER_CACHE_DIR``, else ``$XDG_CACHE_HOME/<tool>``
    (``~/.cache/<tool>``). Downloads, Packer's cache and test fixtures live below it."""
    base = os.environ.get("BUILDER_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / TOOL
