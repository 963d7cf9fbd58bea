"""Facts about this builder: version, commit, and the reproducible build time."""

from __future__ import annotations

import functools
import os

from . import __version__
from .errors import BuilderError
from .paths import DATA_DIR, REPO_DIR
from .run import run, which


@functools.cache
def builder_commit() -> str:
    """The git commit of the builder checkout; an installed wheel's recorded commit (written
    at build time into builder/_data/commit); else "unknown"."""
    if not (REPO_DIR / ".git").exists() or which("git") is None:
        try:
            return (DATA_DIR / "commit").read_text().strip() or "unknown"
        except OSError:
            return "unknown"
    try:
        out = run(["git", "-C", str(REPO_DIR), "rev-parse", "--short=12", "HEAD"]).stdout
    except BuilderError:
        return "unknown"
    return out.strip() or "unknown"


@functools.cache
def _commit_time() -> int | None:
    if not (REPO_DIR / ".git").exists() or which("git") is None:
        return None
    try:
        out = run(["git", "-C", str(REPO_DIR), "log", "-1", "--format=%ct"]).stdout.strip()
    except BuilderError:
        return None
    return int(out) if out.isdigit() else None


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH if set, else the builder's last commit time, else 0."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise BuilderError(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds") from None
    return _commit_time() or 0


def version() -> str:
    return __version__
