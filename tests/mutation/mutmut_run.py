"""Run mutmut (``make mutation``), copying the test tree with its symlinks kept.

mutmut 3 copies ``tests/`` into ``mutants/`` with ``shutil.copytree``'s default, which
follows symlinks; the sysfs fixture trees under ``tests/unit/fixtures/blockdev`` hold
symlink loops (as /sys does), so the copy never ends. Copying the links as links keeps
the fixtures identical and finite; the copy is made afresh on each run. Everything else
is mutmut's own command line.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

_copytree = shutil.copytree


def _copytree_keeping_links(src: Any, dst: Any, symlinks: bool = True, *a: Any, **k: Any) -> Any:
    return _copytree(src, dst, True, *a, **k)


shutil.copytree = _copytree_keeping_links

from mutmut.__main__ import cli  # noqa: E402

if __name__ == "__main__":
    if "run" in sys.argv[1:]:
        # copied afresh each run: copytree(dirs_exist_ok=True) cannot overwrite a link
        shutil.rmtree("mutants/tests", ignore_errors=True)
    sys.exit(cli())
