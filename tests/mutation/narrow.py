"""Narrow pyproject's [tool.mutmut] in a scratch copy of the tree (``make mutation-ci``).

    narrow.py PYPROJECT --mutate builder/hub/tokens.py ... --tests tests/unit/test_x.py ...

Rewrites ``only_mutate`` and ``pytest_add_cli_args_test_selection`` in place (mutmut reads
its settings from ./pyproject.toml, in every process it starts) and checks the result
parses back to exactly those lists. Never run it on the checkout itself.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path


def narrow(text: str, mutate: list[str], tests: list[str]) -> str:
    for key, value in (("only_mutate", mutate), ("pytest_add_cli_args_test_selection", tests)):
        pattern = re.compile(rf"^{key} = \[[^\]]*\]", re.MULTILINE)
        text, n = pattern.subn(f"{key} = {json.dumps(value)}", text)
        if n != 1:
            raise SystemExit(f"pyproject.toml: tool.mutmut.{key}: expected once, found {n}")
    got = tomllib.loads(text)["tool"]["mutmut"]
    if got["only_mutate"] != mutate or got["pytest_add_cli_args_test_selection"] != tests:
        raise SystemExit("pyproject.toml: tool.mutmut: the rewrite did not take")
    return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pyproject", type=Path)
    ap.add_argument("--mutate", nargs="+", required=True)
    ap.add_argument("--tests", nargs="+", required=True)
    args = ap.parse_args()
    args.pyproject.write_text(narrow(args.pyproject.read_text(), args.mutate, args.tests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
