"""Per-module mutation score from mutmut's results (``make mutation``).

killed = the tests failed (or timed out) on the mutant; survived = they passed; "no tests" =
no test ran the mutated function, counted as survived. Only mutants that were run count, so
a run restricted to some modules (``make mutation-ci``) scores just those. Exit 1 when a
module is under --min (percent).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code  # noqa: E402

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests", "suspicious"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min", type=float, default=0.0, help="fail below this percent")
    ap.add_argument("--survivors", action="store_true", help="list the survivors")
    args = ap.parse_args()
    rows = []
    survivors: list[str] = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        count: Counter[str] = Counter()
        for name, code in codes.items():
            status = status_by_exit_code[code]
            if status in KILLED:
                count["killed"] += 1
            elif status in SURVIVED:
                count["survived"] += 1
                survivors.append(f"{name}: {status}")
        total = count["killed"] + count["survived"]
        if total:
            module = str(meta.relative_to("mutants"))[: -len(".meta")]
            rows.append((module, count["killed"], total))
    if not rows:
        print("no mutation results: run `make mutation` first", file=sys.stderr)
        return 1
    bad = False
    print(f"{'module':40} {'killed':>7} {'total':>6} {'score':>7}")
    for module, killed, total in rows:
        pct = 100.0 * killed / total
        bad |= pct < args.min
        flag = f"  below {args.min:g}%" if pct < args.min else ""
        print(f"{module:40} {killed:7d} {total:6d} {pct:6.1f}%{flag}")
    if args.survivors:
        print("\nsurvivors:")
        print("\n".join(sorted(survivors)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
