"""Atomic file writes (temp file beside the target, fsync, rename) and the rule for output
directories: we replace or write into only a directory we created (it carries ``MARKER``), an
empty one or a new one; never a user's directory with something else in it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import TOOL
from .errors import UsageError

# The file every output directory we create carries: only such a directory is ever replaced.
MARKER = f".{TOOL}-output"
_MARKER_TEXT = (
    f"Written by {TOOL}: this directory is replaced by the next build; keep nothing here.\n"
)


def atomic_write(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    target = Path(path)
    with atomic_output(target, mode=mode) as tmp, open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync and rename it into place.

    On any exception (or SIGKILL: the temp name starts with a dot and ends in .part)
    the target is untouched and the temp file is removed when possible.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, mode)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str], bufsize: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def is_ours(path: Path) -> bool:
    """True when ``path`` is a directory we created: it carries the marker (or, for trees
    written before the marker existed, a manifest.json naming this tool)."""
    if (path / MARKER).is_file():
        return True
    manifest = path / "manifest.json"
    try:
        return manifest.is_file() and f'"tool": "{TOOL}"' in manifest.read_text(errors="replace")
    except OSError:
        return False


def claim_output_dir(path: Path, option: str) -> Path:
    """Check that ``path`` may be (re)written by us and return it absolute.

    Allowed: a path that does not exist yet, an empty directory, or a directory that carries
    our marker. Refused (``UsageError``, exit 2, nothing touched): a file, a non-empty
    directory of someone else's, the current directory or one of its parents.
    """
    target = Path(os.path.abspath(path))
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise UsageError(
            f"{option}: {path}: is the current directory (or contains it); refusing to replace it",
            hint=f"give a new or empty subdirectory, e.g. {option} out",
        )
    if not target.exists() and not target.is_symlink():
        return target
    if not target.is_dir() or target.is_symlink():
        raise UsageError(
            f"{option}: {path}: exists and is not a directory",
            hint="give a new directory, or remove that file first",
        )
    if is_ours(target):
        return target
    try:
        empty = not any(target.iterdir())
    except OSError as exc:
        raise UsageError(f"{option}: {path}: {exc.strerror}") from None
    if not empty:
        raise UsageError(
            f"{option}: {path}: is not empty and was not created by {TOOL}; "
            "refusing to replace it (its files would be lost)",
            hint="give a new or empty directory, or move its files away first",
        )
    return target


def mark_ours(path: Path) -> None:
    """Put the marker into a directory we created (it may then be replaced later)."""
    marker = path / MARKER
    if not marker.is_file():
        marker.write_text(_MARKER_TEXT)
