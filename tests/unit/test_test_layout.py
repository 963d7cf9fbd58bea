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


def test_no_test_changes_this_process_path() -> None:
    """In a whole `pytest tests` run the boot lane's pool threads start QEMU, `ip` and the
    builder while the other lanes run in the test thread: a test that puts a stand-in first
    on the process's PATH (or empties it) changes what those threads start. A `bash .ci/run`
    of 2026-11-30 booted test_guestgate's stand-in QEMU in two boot scenarios. A test that
    needs another PATH gives it to a subprocess."""
    import re

    bad = re.compile(r"setenv\(\s*[\"']PATH[\"']|environ\[\s*[\"']PATH[\"']\s*\]\s*=[^=]")
    found = [
        f"{f.relative_to(TESTS)}:{n}"
        for f in sorted(TESTS.rglob("*.py"))
        if "__pycache__" not in f.parts and f.name != Path(__file__).name
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if bad.search(line)
    ]
    assert found == []
