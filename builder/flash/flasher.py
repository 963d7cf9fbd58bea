"""Write an image to a USB stick (or a regular file) without ever hitting the wrong disk.

Order of work in :func:`flash`:

1. pick the image (a path, or the newest ``*.iso`` in ``dist/<site>/``);
2. identify the target through :mod:`builder.blockdev` (sysfs + mountinfo) and refuse it,
   with every reason, when it is not a removable/USB whole disk, is mounted or in use, is
   smaller than the image, or is read-only. ``--force`` overrides the soft reasons; nothing
   overrides "holds the running root filesystem";
3. describe the target (model, size, serial) and ask, unless ``yes`` (no way to ask and no
   ``yes`` → refuse);
4. write it (:mod:`builder.flash.blockio`: large page-aligned blocks, ``O_DIRECT`` when the
   target takes it, reading, hashing and writing overlapped; ``fsync`` at the end), opened
   with ``O_EXCL`` so the kernel itself refuses a device that is mounted, even under
   --force; progress on stderr (:mod:`builder.progress`);
5. read the target back (``O_DIRECT``, or buffered after dropping the page cache) and compare
   its sha256 with the image's, and with ``SHA256SUMS`` beside the image when it lists it.

A regular-file target is written to a temp file and renamed, so it is complete or absent.
Ctrl-C while writing a device raises :class:`FlashInterrupted` (exit 130) saying the stick
is now incomplete.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder import dist as dist_manifest
from builder.errors import BuilderError, Interrupted, Refused, UsageError
from builder.fsutil import atomic_output
from builder.progress import NoProgress, Progress, ProgressLike, stderr_progress

from . import blockdev
from .blockdev import BlockTarget, Problem, SysView, human_size
from .blockio import (
    ALIGN,
    BLOCK_SIZE,
    O_DIRECT,
    VerifyFailed,
    hash_file,
    open_write,
    read_back_sha256,
    write_image,
)

__all__ = [
    "BLOCK_SIZE",
    "O_DIRECT",
    "FlashInterrupted",
    "FlashResult",
    "NoProgress",
    "Progress",
    "ProgressLike",
    "Target",
    "VerifyFailed",
    "check_target",
    "find_target",
    "flash",
    "read_sums",
    "resolve_image",
    "stderr_progress",
    "verify_target",
]

log = logging.getLogger("builder.flash")


class FlashInterrupted(Interrupted):
    """Ctrl-C while writing or verifying: exit 130 like any interrupted command."""


class _Counted:
    """Counts the bytes reported to a progress display (for the Ctrl-C message)."""

    def __init__(self, inner: ProgressLike) -> None:
        self.inner = inner
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        self.inner.update(n)

    def close(self) -> None:
        self.inner.close()


ProgressFactory = Callable[[str, int], ProgressLike]


# --- the image ----------------------------------------------------------------------------


def resolve_image(image: Path | None, site: str | None, dist: Path = Path("dist")) -> Path:
    """The image to write: ``image`` itself, or the site's latest ISO in ``dist/<site>/``.

    Latest = the ISO ``manifest.json`` names (what `builder image` last built), else the
    newest ``*.iso`` by modification time (temp files of a build in progress are skipped).
    """
    if image is not None and site is not None:
        raise UsageError("give either IMAGE or --site, not both")
    if image is not None:
        if not image.is_file():
            raise UsageError(f"{image}: no such image file")
        return image
    if site is None:
        raise UsageError("missing IMAGE (or --site SITE to use the latest ISO in dist/SITE/)")
    folder = dist / site
    built = dist_manifest.artifact_path(folder, "iso")
    if built is not None:
        return built
    isos = [p for p in folder.glob("*.iso") if p.is_file() and not p.name.startswith(".")]
    if not isos:
        raise UsageError(
            f"{folder}: no ISO found for site {site!r}",
            hint=f"build it first: make image SITE={site}",
        )
    return max(isos, key=lambda p: (p.stat().st_mtime, p.name))


def read_sums(path: Path) -> dict[str, str]:
    """``SHA256SUMS`` (sha256sum format, text or ``*binary`` mode): file name → hex digest."""
    sums = {}
    for line in path.read_text(errors="replace").splitlines():
        digest, _, name = line.strip().partition(" ")
        name = name.strip().removeprefix("*")
        if len(digest) == 64 and name:
            sums[Path(name).name] = digest.lower()
    return sums


# --- the target ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    path: Path
    kind: str  # "block" or "file"
    block: BlockTarget | None = None
    exists: bool = True

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.block.problems if self.block else ()

    def describe(self) -> str:
        if self.block is None:
            if self.exists:
                size = self.path.stat().st_size
                return f"{self.path}: regular file, {human_size(size)} (will be replaced)"
            return f"{self.path}: new regular file"
        d = self.block.disk
        size = self.block.size
        lines = [
            f"{self.path}: {d.label}, {human_size(size)} ({size} bytes), "
            f"serial {d.serial or 'unknown'}, {d.transport}"
            + (", removable" if d.removable else ""),
        ]
        if self.block.partition:
            lines[0] += f" (partition {self.block.partition.name} of /dev/{d.name})"
        elif d.partitions:
            parts = ", ".join(f"{p.name} {human_size(p.size)}" for p in d.partitions)
            lines.append(f"  partitions: {parts}")
        return "\n".join(lines)


def find_target(device: str, image_size: int, view: SysView) -> Target:
    """Identify ``device``: a block device (looked up in ``view``) or a regular file."""
    path = Path(device).absolute()
    if path.exists():
        real = Path(os.path.realpath(path))
        st = os.stat(real)
        if stat.S_ISBLK(st.st_mode):
            devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            blk = blockdev.inspect(devno, image_size, view)
            if blk is None:
                raise BuilderError(
                    f"{device}: block device {devno} not found under {view.sys_root}/block"
                )
            return Target(real, "block", blk)
        if stat.S_ISREG(st.st_mode):
            return Target(path, "file")
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{device}: is a directory, not a device or image file")
        raise UsageError(f"{device}: not a block device or regular file")
    if path.parent == Path("/dev") or str(path).startswith(("/dev/disk/", "/dev/mapper/")):
        # Never create files where device nodes live. A fixture view may still know the name.
        blk = blockdev.inspect(path.name, image_size, view)
        if blk is None or view.is_host:
            raise UsageError(
                f"{device}: no such device", hint="list candidates with `builder devices`"
            )
        return Target(path, "block", blk, exists=False)
    if "/" not in device and Path("/dev", device).exists():
        raise UsageError(
            f"{device}: no such file here; did you mean /dev/{device}?",
            hint="a DEVICE without a directory is taken as a file name",
        )
    if not path.parent.is_dir():
        raise UsageError(f"{device}: directory {path.parent} does not exist")
    return Target(path, "file", exists=False)


def check_target(target: Target, *, force: bool) -> list[Problem]:
    """Raise when the target must not be written; return the problems ``force`` overrode."""
    probs = list(target.problems)
    if not probs:
        return []
    hard = [p for p in probs if p.hard]
    if hard or not force:
        lines = [f"refusing to flash {target.path}:"] + [f"  - {p.message}" for p in probs]
        if hard:
            hint = "--force cannot override: " + "; ".join(p.message for p in hard)
        else:
            hint = "check `builder devices`; --force overrides this if you are sure"
        raise Refused("\n".join(lines), hint=hint)
    return probs


# --- the whole operation ------------------------------------------------------------------


@dataclass
class FlashResult:
    image: Path
    target: Path
    bytes: int
    seconds: float
    direct: bool
    sha256: str | None = None
    verified: bool = False
    sums_file: Path | None = None
    overridden: list[Problem] = field(default_factory=list)


def _sums_digest(image: Path) -> tuple[Path | None, str | None]:
    sums = image.parent / "SHA256SUMS"
    if not sums.is_file():
        return None, None
    digest = read_sums(sums).get(image.name)
    if digest is None:
        log.warning("%s does not list %s; comparing with the image only", sums, image.name)
        return None, None
    return sums, digest


def verify_target(
    image: Path,
    target: Path,
    *,
    expected: str | None = None,
    progress_factory: ProgressFactory | None = None,
    block_size: int = BLOCK_SIZE,
    name: str | None = None,
) -> str:
    """Compare the start of ``target`` with ``image`` (or with ``expected``) by sha256.

    ``name`` is what messages call the target (default: its path).
    """
    name = name or str(target)
    progress_factory = progress_factory or stderr_progress
    length = image.stat().st_size
    if expected is None:
        expected = hash_file(image, progress_factory("hashing", length), block_size)
    progress = progress_factory("verifying", length)
    try:
        got = read_back_sha256(target, length, progress=progress, block_size=block_size)
    except KeyboardInterrupt:
        raise FlashInterrupted(f"verification of {name} interrupted") from None
    finally:
        progress.close()
    if got != expected:
        raise VerifyFailed(
            f"{name}: verification failed: sha256 of the {length} bytes read back is "
            f"{got}, the image's is {expected}",
            hint="the write did not stick: try another USB port or stick, then flash again",
        )
    return got


def flash(
    image: Path,
    device: str,
    *,
    yes: bool = False,
    force: bool = False,
    verify: bool = True,
    confirm: Callable[[str], bool] | None = None,
    view: SysView | None = None,
    progress_factory: ProgressFactory | None = None,
    block_size: int = BLOCK_SIZE,
    direct: bool = True,
) -> FlashResult:
    """Write ``image`` to ``device`` after every safety check; verify unless told not to.

    ``confirm(summary)`` is asked unless ``yes``; with neither we refuse. ``view`` is the
    sysfs/mountinfo view (default: this machine); a fixture view never allows writing to a
    block device.
    """
    if block_size <= 0 or block_size % ALIGN:
        raise UsageError(f"block size {block_size} is not a positive multiple of {ALIGN}")
    view = view or SysView()
    progress_factory = progress_factory or stderr_progress
    length = image.stat().st_size
    if length == 0:
        raise UsageError(f"{image}: image is empty")
    target = find_target(device, length, view)
    if target.kind == "file" and target.exists and target.path.samefile(image):
        raise UsageError(f"{device}: is the image itself")
    overridden = check_target(target, force=force)
    if target.kind == "block" and not view.is_host:
        raise Refused(
            f"refusing to write {target.path}: the device view ({view.sys_root}, "
            f"{view.mountinfo}) is not this machine's"
        )
    summary = target.describe()
    for p in overridden:
        summary += f"\n  --force overrides: {p.message}"
    if target.kind == "block" or target.exists:
        action = f"About to overwrite {summary}\nwith {image} ({human_size(length)})."
        if not yes:
            if confirm is None:
                raise UsageError(
                    f"refusing to overwrite {target.path} without confirmation: "
                    "there is no terminal to ask on",
                    hint="check the device with `builder devices`, then pass --yes",
                )
            if not confirm(action + "\nEverything on it will be lost."):
                raise BuilderError(f"not confirmed: nothing was written to {target.path}")
    log.info("writing %s (%s) to %s", image, human_size(length), summary)

    sums_file, sums_digest = _sums_digest(image) if verify else (None, None)
    if target.kind == "file":
        result = _flash_file(
            image, target.path, length, verify, progress_factory, block_size, direct
        )
    else:
        result = _flash_block(image, target, length, verify, progress_factory, block_size, direct)
    result.overridden = overridden
    if verify and result.sha256 and sums_digest:
        if result.sha256 != sums_digest:
            raise VerifyFailed(
                f"{image}: sha256 {result.sha256} does not match {sums_file} ({sums_digest}); "
                f"{target.path} now holds this unexpected image",
                hint="the image changed after it was built: rebuild it, then flash again",
            )
        result.sums_file = sums_file
    return result


def _flash_file(
    image: Path,
    path: Path,
    length: int,
    verify: bool,
    progress_factory: ProgressFactory,
    block_size: int,
    direct: bool,
) -> FlashResult:
    with atomic_output(path) as tmp:
        fd, used_direct = open_write(tmp, direct=direct, exclusive=False)
        progress = progress_factory("writing", length)
        try:
            res = write_image(
                image,
                fd,
                length=length,
                direct=used_direct,
                hash_image=verify,
                progress=progress,
                block_size=block_size,
            )
        except KeyboardInterrupt:
            raise FlashInterrupted(f"interrupted: nothing was written to {path}") from None
        finally:
            progress.close()
            os.close(fd)
        if verify:
            verify_target(
                image,
                tmp,
                expected=res.sha256,
                progress_factory=progress_factory,
                block_size=block_size,
                name=str(path),
            )
    return FlashResult(image, path, res.bytes, res.seconds, res.direct, res.sha256, verify)


def _flash_block(
    image: Path,
    target: Target,
    length: int,
    verify: bool,
    progress_factory: ProgressFactory,
    block_size: int,
    direct: bool,
) -> FlashResult:
    path = target.path
    try:
        # O_EXCL always, even under --force: the kernel's own "mounted or held" verdict
        fd, used_direct = open_write(path, direct=direct, exclusive=True)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise BuilderError(
                f"{path}: device is busy (the kernel says it is mounted or in use)",
                hint="unmount its filesystems (udisksctl unmount -b …) and try again",
            ) from exc
        raise BuilderError(f"{path}: cannot open for writing: {exc.strerror}") from exc
    progress = _Counted(progress_factory("writing", length))
    try:
        res = write_image(
            image,
            fd,
            length=length,
            direct=used_direct,
            hash_image=verify,
            progress=progress,
            block_size=block_size,
        )
    except KeyboardInterrupt:
        where = f" after {human_size(progress.done)} of {human_size(length)}"
        raise FlashInterrupted(
            f"interrupted{where}: {path} is now incomplete and will not boot",
            hint="run the same `builder flash` command again to write it completely",
        ) from None
    finally:
        progress.close()
        os.close(fd)
    if verify:
        verify_target(
            image,
            path,
            expected=res.sha256,
            progress_factory=progress_factory,
            block_size=block_size,
        )
    return FlashResult(image, path, res.bytes, res.seconds, res.direct, res.sha256, verify)
