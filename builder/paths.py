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
# The top-level cloud-init/, packer/ and profiles/ of the checkout. An installed wheel carries
# copies in builder/_data/ (setup.py copies them at build time); an editable install or a run
# from the checkout reads the top-level directories themselves.
DATA_DIR = PACKAGE_DIR / "_data"


def _shipped(name: str) -> Path:
    packaged = DATA_DIR / name
    return packaged if packaged.is_dir() else REPO_DIR / name


TEMPLATES_DIR = _shipped("cloud-init")
PACKER_DIR = _shipped("packer")
SCRIPTS_DIR = PACKER_DIR / "scripts"
# the example profiles: used when neither --profiles, $BUILDER_PROFILES nor ./profiles is given
PROFILES_DIR = _shipped("profiles")


def cache_dir() -> Path:
    """The one cache root: ``$BUILDER_CACHE_DIR``, else ``$XDG_CACHE_HOME/<tool>``
    (``~/.cache/<tool>``). Downloads, Packer's cache and test fixtures live below it."""
    base = os.environ.get("BUILDER_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / TOOL
