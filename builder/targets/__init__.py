"""Targets: what a rendered build tree becomes (iso, ami/qcow2 via Packer, seed).

``CHECKS`` are every validator of a rendered tree: the site layer's node-file checks plus the
Packer templates' ``packer validate``; ``validate_site`` runs them all (``builder validate``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from builder.site.validate import CHECKS as SITE_CHECKS
from builder.site.validate import Check, validate_site_tree


def _check_packer(tree: Path) -> list[str]:
    # both Packer targets, offline, Packer 1.6 compatible: see builder/targets/packer_check.py
    from builder.targets.packer_check import check_packer_tree

    return check_packer_tree(tree)


def _packer_inputs() -> tuple[Path, ...]:
    from builder.targets import packer, packer_check

    return (Path(__file__), Path(packer.__file__), Path(packer_check.__file__), packer.packer_dir())


# packer validate reads the rendered variables and the scripts they name: the whole tree
CHECKS: tuple[Check, ...] = (
    *SITE_CHECKS,
    Check("packer-validate", "packer", _check_packer, ("**/*",), _packer_inputs),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


def validate_site(
    render: Callable[[Path], object], skip: tuple[str, ...] = (), *, cache: bool = True
) -> list[str]:
    """Render into a throwaway directory and run every check (nothing is written); a check
    that passed before on the same inputs is not run again (``cache=False`` runs it)."""
    return validate_site_tree(render, skip, CHECKS, cache=cache)
