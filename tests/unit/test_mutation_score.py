"""tests/mutation/score.py: scores with the equivalent-mutant register (issue 18).

A small mutants/ tree as mutmut 3 writes it (a generated module with each function's
``__mutmut_orig`` copy beside its numbered mutants, and a ``.meta`` JSON file with
``exit_code_by_key``: 1 = killed, 0 = survived, None = not run). Expected fingerprints are
computed here from the changed lines written out by hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCORE = ROOT / "tests" / "mutation" / "score.py"
_spec = importlib.util.spec_from_file_location("mutation_score", SCORE)
assert _spec and _spec.loader
score = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = score  # dataclasses look their module up there
_spec.loader.exec_module(score)

MOD = "builder.demo."
F1, F2, F3 = (MOD + f"x_f__mutmut_{i}" for i in (1, 2, 3))
G1 = MOD + "xǁStoreǁg__mutmut_1"
H1 = MOD + "x_h__mutmut_1"  # generated, not run

SOURCE = """\
def x_f__mutmut_orig(a, b=1):
    c = a + b
    return c


def x_f__mutmut_1(a, b=1):
    c = a - b
    return c


def x_f__mutmut_2(a, b=2):
    c = a + b
    return c


def x_f__mutmut_3(a, b=1):
    c = None
    return c


class Store:
    def xǁStoreǁg__mutmut_orig(self, c):
        return c.execute("SELECT 1 FROM nodes").fetchone()

    def xǁStoreǁg__mutmut_1(self, c):
        return c.execute("select 1 from nodes").fetchone()


def x_h__mutmut_orig():
    return 1


def x_h__mutmut_1():
    return 2
"""


def fp(*lines: str) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


FP_G1 = fp(
    '-return c.execute("SELECT 1 FROM nodes").fetchone()',
    '+return c.execute("select 1 from nodes").fetchone()',
)
FP_F2 = fp("-def _(a, b=1):", "+def _(a, b=2):")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "mutants" / "builder"
    d.mkdir(parents=True)
    (d / "demo.py").write_text(SOURCE)
    codes = {F1: 1, F2: 0, F3: 0, G1: 0, H1: None}
    (d / "demo.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path


def register(tmp_path: Path, *entries: tuple[str, str]) -> Path:
    text = '[reason]\nsql-case = "SQLite keywords are case-insensitive"\n'
    for name, fingerprint in entries:
        text += f'\n[[mutant]]\nname = "{name}"\nwhy = "sql-case"\nfingerprint = "{fingerprint}"\n'
    path = tmp_path / "equivalent.toml"
    path.write_text(text)
    return path


def run(tree: Path, reg: Path, *args: str) -> int:
    return score.main(["--root", str(tree), "--register", str(reg), *args])


def test_change_is_the_mutated_lines_including_a_default(tree: Path) -> None:
    src = score.Sources(tree)
    assert src.change("builder/demo.py", G1) == [
        '-return c.execute("SELECT 1 FROM nodes").fetchone()',
        '+return c.execute("select 1 from nodes").fetchone()',
    ]
    assert src.change("builder/demo.py", F2) == ["-def _(a, b=1):", "+def _(a, b=2):"]
    assert src.change("builder/demo.py", F3) == ["-c = a + b", "+c = None"]
    assert src.change("builder/demo.py", MOD + "x_f__mutmut_9") is None
    assert score.fingerprint(src.change("builder/demo.py", G1) or []) == FP_G1


def test_without_register_raw_score(tree: Path, tmp_path: Path, capsys) -> None:
    assert run(tree, register(tmp_path), "--min", "25", "--survivors") == 0
    out = capsys.readouterr().out
    # killed 1 of 4 run (H1 was not run): 25.0 % both ways
    assert "builder/demo.py" in out
    assert out.splitlines()[1].split() == ["builder/demo.py", "1", "0", "4", "25.0%", "25.0%"]
    assert f"{G1}: survived" in out and f"{F2}: survived" in out
    assert run(tree, register(tmp_path), "--min", "30") == 1


def test_listed_equivalents_leave_the_denominator(tree: Path, tmp_path: Path, capsys) -> None:
    reg = register(tmp_path, (G1, FP_G1), (F2, FP_F2))
    assert run(tree, reg, "--min", "50", "--survivors") == 0
    out = capsys.readouterr().out
    # killed 1, equivalent 2, total 4: 1 / (4 - 2) = 50.0 %, raw 1 / 4
    assert out.splitlines()[1].split() == ["builder/demo.py", "1", "2", "4", "50.0%", "25.0%"]
    survivors = out.split("survivors:")[1]
    assert G1 not in survivors and F2 not in survivors and F3 in survivors
    assert run(tree, reg, "--min", "50.1") == 1


def test_stale_fingerprint_fails_and_counts_as_survived(tree: Path, tmp_path: Path, capsys) -> None:
    # the entry's fingerprint is F2's: as if G1 now named another mutation
    reg = register(tmp_path, (G1, FP_F2))
    assert run(tree, reg) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].split()[1:4] == ["1", "0", "4"]
    assert f"{G1}: the mutation changed (fingerprint mismatch)" in captured.err


def test_listed_mutant_no_longer_generated_is_stale(tree: Path, tmp_path: Path, capsys) -> None:
    reg = register(tmp_path, (G1, FP_G1), (MOD + "x_f__mutmut_9", FP_G1))
    assert run(tree, reg) == 1
    assert f"{MOD}x_f__mutmut_9: no such mutant any more" in capsys.readouterr().err


def test_listed_killed_mutant_is_noted_not_failed(tree: Path, tmp_path: Path, capsys) -> None:
    reg = register(tmp_path, (F1, fp("-c = a + b", "+c = a - b")))
    assert run(tree, reg) == 0
    out = capsys.readouterr().out
    assert f"note: {F1}: listed as equivalent but killed: remove it" in out
    assert out.splitlines()[1].split()[1:4] == ["1", "0", "4"]


def test_entries_of_mutants_not_run_are_ignored(tree: Path, tmp_path: Path, capsys) -> None:
    # H1 generated but not run; the other module not run at all (as in `make mutation-ci`)
    # (x_h__mutmut_2 is not generated, but no mutant of h was run: not judged)
    reg = register(
        tmp_path,
        (H1, "0" * 16),
        (MOD + "x_h__mutmut_2", "0" * 16),
        ("builder.other.x_k__mutmut_1", "0" * 16),
    )
    assert run(tree, reg) == 0
    captured = capsys.readouterr()
    assert "stale" not in captured.err and "note:" not in captured.out


def test_entry_with_unknown_reason_is_refused(tree: Path, tmp_path: Path) -> None:
    reg = tmp_path / "bad.toml"
    reg.write_text(
        f'[reason]\n\n[[mutant]]\nname = "{G1}"\nwhy = "nope"\nfingerprint = "{FP_G1}"\n'
    )
    with pytest.raises(SystemExit, match="no \\[reason\\] 'nope'"):
        run(tree, reg)


def test_committed_register_is_well_formed() -> None:
    data = tomllib.loads((ROOT / "tests" / "mutation" / "equivalent.toml").read_text())
    names = [m["name"] for m in data["mutant"]]
    assert len(names) == len(set(names))
    for m in data["mutant"]:
        assert m["why"] in data["reason"], m["name"]
        assert len(m["fingerprint"]) == 16 and int(m["fingerprint"], 16) >= 0, m["name"]
        assert "__mutmut_" in m["name"] and m["name"].startswith("builder."), m["name"]
