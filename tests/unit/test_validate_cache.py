"""builder.site.validate: checks run at the same time, and a pass is remembered by the
content hash of what the check read: a changed input runs it again, a failure never counts
as a pass."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from builder.errors import ValidationError
from builder.site import validate
from builder.site.validate import Check


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))
    t = tmp_path / "tree"
    (t / "scripts").mkdir(parents=True)
    (t / "scripts" / "a.sh").write_text("echo a\n")
    (t / "other.txt").write_text("not read by the check\n")
    return t


def _counting(problems: list[str] | None = None) -> tuple[Check, list[Path]]:
    calls: list[Path] = []

    def func(tree: Path) -> list[str]:
        calls.append(tree)
        text = (tree / "scripts" / "a.sh").read_text()
        return list(problems or []) + (["a.sh: bad"] if "bad" in text else [])

    return Check("count", None, func, ("scripts/**/*",)), calls


def test_a_pass_is_remembered_until_an_input_changes(tree: Path) -> None:
    check, calls = _counting()
    assert validate.validate_tree(tree, checks=(check,)) == ["count"]
    assert validate.validate_tree(tree, checks=(check,)) == ["count"]
    assert len(calls) == 1
    (tree / "other.txt").write_text("changed, but the check does not read it\n")
    validate.validate_tree(tree, checks=(check,))
    assert len(calls) == 1
    (tree / "scripts" / "a.sh").write_text("echo b\n")  # an input changed: runs again
    validate.validate_tree(tree, checks=(check,))
    assert len(calls) == 2
    (tree / "scripts" / "b.sh").write_text("echo new file\n")  # a new input too
    validate.validate_tree(tree, checks=(check,))
    assert len(calls) == 3
    (tree / "scripts" / "b.sh").chmod(0o755)  # so does the executable bit
    validate.validate_tree(tree, checks=(check,))
    assert len(calls) == 4


def test_a_changed_input_that_fails_is_reported_after_a_cached_pass(tree: Path) -> None:
    check, calls = _counting()
    validate.validate_tree(tree, checks=(check,))
    (tree / "scripts" / "a.sh").write_text("bad\n")
    with pytest.raises(ValidationError) as exc:
        validate.validate_tree(tree, checks=(check,))
    assert exc.value.problems == ["a.sh: bad"]


def test_a_failure_is_never_remembered_as_a_pass(tree: Path) -> None:
    check, calls = _counting(["x: broken"])
    for _ in range(3):
        with pytest.raises(ValidationError) as exc:
            validate.validate_tree(tree, checks=(check,))
        assert exc.value.problems == ["x: broken"]
    assert len(calls) == 3
    assert not list((tree.parent / "cache").rglob("count-*"))


def test_a_check_that_raises_is_not_remembered(tree: Path) -> None:
    calls = []

    def boom(t: Path) -> list[str]:
        calls.append(t)
        raise RuntimeError("validator crashed")

    check = Check("boom", None, boom, ("scripts/**/*",))
    for _ in range(2):
        with pytest.raises(RuntimeError):
            validate.validate_tree(tree, checks=(check,))
    assert len(calls) == 2


def test_the_checker_code_and_extra_inputs_are_in_the_key(tree: Path, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text("{}")
    check, calls = _counting()
    check = Check(check.name, None, check.func, check.inputs, lambda: (schema,))
    first = validate.check_key(check, tree)
    schema.write_text('{"type": "object"}')
    assert validate.check_key(check, tree) != first
    other = Check("other-name", None, check.func, check.inputs, lambda: (schema,))
    assert validate.check_key(other, tree) != validate.check_key(check, tree)


def test_no_cache_runs_every_time(tree: Path) -> None:
    check, calls = _counting()
    validate.validate_tree(tree, checks=(check,), cache=False)
    validate.validate_tree(tree, checks=(check,), cache=False)
    assert len(calls) == 2


def test_checks_run_at_the_same_time_and_report_in_order(tree: Path) -> None:
    barrier = threading.Barrier(3, timeout=5)

    def slow(name: str) -> Check:
        def func(t: Path) -> list[str]:
            barrier.wait()  # only passes if all three are running at once
            time.sleep(0.01)
            return [f"{name}: problem"]

        return Check(name, None, func)

    checks = (slow("c1"), slow("c2"), slow("c3"))
    with pytest.raises(ValidationError) as exc:
        validate.validate_tree(tree, checks=checks)
    assert exc.value.problems == ["c1: problem", "c2: problem", "c3: problem"]
