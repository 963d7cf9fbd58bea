"""Per-module mutation score from mutmut's results (``make mutation``).

killed = the tests failed (or timed out) on the mutant; survived = they passed; "no tests" =
no test ran the mutated function, counted as survived. Only mutants that were run count, so
a run restricted to some modules (``make mutation-ci``) scores just those.

Equivalent mutants (no behaviour can tell them from the original) are listed in
``equivalent.toml`` beside this file, each with its reason and a fingerprint of the mutation
(a hash of the lines the mutant changes). A survivor counts as equivalent only when it is
listed and its fingerprint still matches, so an entry cannot silently cover another mutation
after an edit renumbers the mutants. score = killed / (total - equivalent); the raw
killed / total is printed beside it. Exit 1 when a module's score is under --min (percent)
or when the register has stale entries (a listed mutant whose function was run but which is
no longer generated, or whose mutation changed); a listed mutant that is now killed is only
noted (remove it from the register).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mutmut.stats import status_by_exit_code  # noqa: E402

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests", "suspicious"}
REGISTER = Path(__file__).with_name("equivalent.toml")
SEP = "ǁ"  # mutmut's class separator in mangled names


@dataclass
class Row:
    module: str
    killed: int = 0
    equivalent: int = 0
    total: int = 0

    @property
    def raw(self) -> float:
        return 100.0 * self.killed / self.total

    @property
    def score(self) -> float:
        counted = self.total - self.equivalent
        return 100.0 * self.killed / counted if counted else 100.0


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions and methods of classes, by name (as mutmut looks them up)."""
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[sub.name] = sub
    return found


class Sources:
    """The generated ``mutants/<module>.py`` files, parsed once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[str, dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}

    def _load(self, module: str) -> tuple[str, dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        if module not in self._cache:
            text = (self.root / "mutants" / module).read_text()
            self._cache[module] = (text, _functions(ast.parse(text)))
        return self._cache[module]

    def _body(self, module: str, func: str) -> list[str] | None:
        text, funcs = self._load(module)
        node = funcs.get(func)
        if node is None:
            return None
        # both copies named alike, so that only the mutation differs (a default may change)
        lines = (ast.get_source_segment(text, node) or "").splitlines()
        lines[0] = lines[0].replace(func, "_", 1)
        return [line.strip() for line in lines]

    def change(self, module: str, name: str) -> list[str] | None:
        """The lines mutant ``name`` removes (``-``) and adds (``+``), stripped; None if absent."""
        func = name.rpartition(".")[2]
        orig = self._body(module, func.partition("__mutmut_")[0] + "__mutmut_orig")
        mutant = self._body(module, func)
        if orig is None or mutant is None:
            return None
        diff = difflib.unified_diff(orig, mutant, n=0, lineterm="")
        return [d for d in diff if d[:1] in "+-" and not d.startswith(("---", "+++"))]


def fingerprint(change: list[str]) -> str:
    return hashlib.sha256("\n".join(change).encode()).hexdigest()[:16]


def load_register(path: Path) -> dict[str, dict[str, str]]:
    """name -> {"why": class, "fingerprint": ...}; reasons are checked to exist."""
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    reasons = data.get("reason", {})
    entries: dict[str, dict[str, str]] = {}
    for entry in data.get("mutant", []):
        if entry["why"] not in reasons:
            raise SystemExit(f"{path}: mutant {entry['name']}: no [reason] {entry['why']!r}")
        entries[entry["name"]] = entry
    return entries


def score(root: Path, register: dict[str, dict[str, str]]) -> Report:
    report = Report()
    sources = Sources(root)
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(root / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        row = Row(module)
        ran_functions = set()
        for name, code in codes.items():
            if code is None:
                continue  # not run
            ran_functions.add(name.partition("__mutmut_")[0])
            status = status_by_exit_code[code]
            entry = register.get(name)
            if status in KILLED:
                row.killed += 1
                if entry:
                    report.notes.append(f"{name}: listed as equivalent but killed: remove it")
            elif status in SURVIVED:
                change = sources.change(module, name) if entry else None
                if entry and change is not None and fingerprint(change) == entry["fingerprint"]:
                    row.equivalent += 1
                else:
                    if entry:
                        report.stale.append(f"{name}: the mutation changed (fingerprint mismatch)")
                    report.survivors.append(f"{name}: {status}")
            else:
                continue
            row.total += 1
        # listed mutants of a function that was run but which mutmut no longer generates
        prefix = module[: -len(".py")].replace("/", ".") + "."
        report.stale += [
            f"{n}: no such mutant any more"
            for n in register
            if n.startswith(prefix)
            and n.partition("__mutmut_")[0] in ran_functions
            and n not in codes
        ]
        if row.total:
            report.rows.append(row)
    return report


def show(root: Path, names: list[str]) -> int:
    """Each mutant's changed lines and fingerprint, for a register entry."""
    sources = Sources(root)
    for name in names:
        module = name.rpartition(".")[0].replace(".", "/") + ".py"
        change = sources.change(module, name)
        if change is None:
            print(f"{name}: not found under {root / 'mutants' / module}", file=sys.stderr)
            return 1
        print(f"{name}\nfingerprint = {fingerprint(change)!r}")
        print("\n".join(f"  {line}" for line in change))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min", type=float, default=0.0, help="fail below this percent")
    ap.add_argument("--survivors", action="store_true", help="list the survivors")
    ap.add_argument("--root", type=Path, default=Path("."), help="the tree holding mutants/")
    ap.add_argument("--register", type=Path, default=REGISTER, help="equivalent mutants")
    ap.add_argument(
        "--show", nargs="+", metavar="NAME", help="print mutants' changes, fingerprints"
    )
    args = ap.parse_args(argv)
    if args.show:
        return show(args.root, args.show)
    report = score(args.root, load_register(args.register))
    if not report.rows:
        print("no mutation results: run `make mutation` first", file=sys.stderr)
        return 1
    bad = False
    head = f"{'module':40} {'killed':>7} {'equiv':>6} {'total':>6} {'score':>7} {'raw':>7}"
    print(head)
    for r in report.rows:
        bad |= r.score < args.min
        flag = f"  below {args.min:g}%" if r.score < args.min else ""
        print(
            f"{r.module:40} {r.killed:7d} {r.equivalent:6d} {r.total:6d}"
            f" {r.score:6.1f}% {r.raw:6.1f}%{flag}"
        )
    if args.survivors:
        print("\nsurvivors:")
        print("\n".join(sorted(report.survivors)))
    for note in sorted(report.notes):
        print(f"note: {note}")
    if report.stale:
        print(f"\nstale entries in {args.register} (fix or remove them):", file=sys.stderr)
        print("\n".join(sorted(report.stale)), file=sys.stderr)
    return 1 if bad or report.stale else 0


if __name__ == "__main__":
    sys.exit(main())
