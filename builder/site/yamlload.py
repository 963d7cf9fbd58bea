"""Bounded YAML loading for profile files and ``--set`` values.

A profile is a few kilobytes of mappings a handful of levels deep. A document that is
larger, nests deeper, or uses aliases to stand for more values than that ("billion
laughs": nine levels of ten aliases are 10^9 strings in under 1 KB) is refused before it
is built, by a streaming pass over the parser's events: memory and time stay bounded by
the size of the text. PyYAML's composer is recursive, so the depth bound also keeps a
deeply nested document from ending in a RecursionError.

Speed (issue 17): each pass runs on libyaml (PyYAML's C binding) when it is installed;
any error there (a syntax error, a bound, a duplicate key) is raised again by the pure-Python
passes, so every message and mark is exactly the pure-Python one. libyaml is the parser
PyYAML's pure-Python one was ported from (same events, same line/column marks); a valid
profile reads ~10x faster (three passes over each file on a `builder validate`).

Duplicate keys are refused too: a silent overwrite is a bug magnet. Keys are text: every
key of a profile is a name (a section, a sysctl, a label), so a null, number, boolean, list
or mapping key is refused where it stands instead of failing later where names are compared.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a profile is a few KB
MAX_DEPTH = 64  # levels of nesting, the top-level mapping included
MAX_NODES = 100_000  # scalars and collections after alias expansion


class DocumentTooLarge(Exception):
    """The text exceeds a bound; the message says which, with line and column."""


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be text, not {_kind(key)}", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)

_C_LOADER: Any = getattr(yaml, "CSafeLoader", None)  # None: PyYAML built without libyaml
_C_UNIQUE: Any = None
if _C_LOADER is not None:

    class _CUniqueKeyLoader(_C_LOADER):  # type: ignore[misc, valid-type]
        """UniqueKeyLoader on libyaml's parser: the same constructors, in C up to them."""

    _CUniqueKeyLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
        _construct_mapping,  # type: ignore[arg-type]
    )
    _C_UNIQUE = _CUniqueKeyLoader


def read_text(path: Path) -> str:
    """The file's text, refusing more than MAX_BYTES without reading past them.

    Raises OSError / UnicodeDecodeError as ``Path.read_text`` does.
    """
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise DocumentTooLarge(f"larger than {MAX_BYTES} bytes; a profile is a few kilobytes")
    return data.decode()


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def check_bounds(text: str, loader: Any = yaml.SafeLoader) -> None:
    """Raise DocumentTooLarge when ``text`` nests or expands beyond the bounds.

    Syntax errors surface as yaml.YAMLError, exactly as loading would raise them.
    """
    sizes: dict[str, int] = {}  # anchor -> number of values it stands for
    stack: list[list[Any]] = []  # open collections: [anchor, values so far]
    total = 0

    def add(count: int, mark: Any) -> None:
        nonlocal total
        if stack:
            stack[-1][1] += count
            current = stack[-1][1]
        else:
            total += count
            current = total
        if current > MAX_NODES:
            raise DocumentTooLarge(
                f"{_at(mark)}the document expands to more than {MAX_NODES} values "
                "(aliases that repeat aliases)"
            )

    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise DocumentTooLarge(
                    f"{_at(event.start_mark)}nested deeper than {MAX_DEPTH} levels "
                    "(a profile needs a handful)"
                )
            stack.append([event.anchor, 1])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, count = stack.pop()
            if anchor:
                sizes[anchor] = count
            add(count, event.start_mark)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                sizes[event.anchor] = 1
            add(1, event.start_mark)
        elif isinstance(event, yaml.AliasEvent):
            add(sizes.get(event.anchor or "", 1), event.start_mark)


def load(text: str) -> Any:
    """Check the bounds, then load with unique keys (safe types only)."""
    if _C_UNIQUE is not None:
        try:
            check_bounds(text, _C_LOADER)
            return yaml.load(text, Loader=_C_UNIQUE)
        except (yaml.YAMLError, DocumentTooLarge):
            pass  # raised again below, with the pure-Python parser's message and marks
    check_bounds(text)
    return yaml.load(text, Loader=UniqueKeyLoader)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every key path in a (bounds-checked, loadable) YAML document: the
    line of the key for mapping entries, of the item for sequence entries. Best effort: an
    unparsable document gives {}."""
    root = None
    if _C_LOADER is not None:
        with contextlib.suppress(yaml.YAMLError):
            root = yaml.compose(text, Loader=_C_LOADER)
    if root is None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            return {}
    out: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                out.setdefault(sub, key.start_mark.line + 1)
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = (*path, str(i))
                out.setdefault(sub, item.start_mark.line + 1)
                walk(item, sub)

    walk(root, ())
    return out
