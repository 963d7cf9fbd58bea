"""Small helpers shared by the profile loader and its checks: provenance and naming."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Path_ = tuple[str, ...]  # a key path: ("wireguard", "overlay_cidr")

DEFAULTS_SOURCE = "builder defaults"
SET_SOURCE = "--set"


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def source_for(sources: Mapping[Path_, str], path: Path_, fallback: str) -> str:
    """The layer that set ``path`` (or its nearest parent), else ``fallback``."""
    while path:
        if path in sources:
            return sources[path]
        path = path[:-1]
    return fallback


def file_ref_path(ref: str, base_dir: Path) -> Path:
    """The path a ``file:PATH`` reference names; relative paths resolve against ``base_dir``."""
    path = Path(os.path.expanduser(ref.removeprefix("file:")))
    return path if path.is_absolute() else base_dir / path


def kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None
