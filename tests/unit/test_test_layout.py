"""pytest collects tests/unit, tests/integration and tests/boot in one run (`make test`) with
rootdir-relative module names by basename: two test files with the same basename in two
lanes abort the whole collection ("import file mismatch"), which a lane run alone never
shows. A clean-clone CI run of 2026-11-30 stopped there (tests/boot/test_iso_cli.py beside
tests/unit/test_iso_cli.py)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique_across_lanes() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for f in TESTS.rglob("test_*.py"):
        if "__pycache__" not in f.parts:
            seen[f.name].append(str(f.relative_to(TESTS)))
    assert len(seen) > 50  # the lanes were found at all
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert clashes == {}
