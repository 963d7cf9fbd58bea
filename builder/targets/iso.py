"""Remaster an Ubuntu live-server ISO for unattended install, keeping its hybrid boot.

``remaster(base, out, add_dir, volume_id=…, grub_timeout=…)`` grows a copy of the base
rather than rewriting it (issue 17)::

    copy BASE -> OUT            (copy_file_range: a reflink on XFS/btrfs, kernel-side elsewhere)
    xorriso -dev OUT -boot_image any replay -append_partition 2 <type> <ESP copy> -volid … \
            -map <staged file> /<path> … -commit

xorriso's growing mode on an overwritable medium (a regular file is one) appends one small
session with our files and rewrites the volume descriptors at LBA 16 (and at the partition
offset's, so the GPT "ISO9660" partition mounts the new tree too) and the system area in
place; the base's bytes are not read or written again. The base's appended partitions (the
EFI system partition) are copied out and appended again after the new session, so the
layout stays Ubuntu's: partition 1 covers the whole ISO 9660 tree, the ESP follows it, and
the El Torito EFI entry points at it. (Left where it was, the ESP would sit inside the grown
image and xorriso would have to shorten partition 1 to end before it, so partition 1 would
no longer hold the new tree.) Should growing fail, the whole image is written in xorriso's
modifying mode instead (``-indev BASE -outdev OUT``), the pre-issue-17 path.

``-boot_image any replay`` re-creates the base's boot setup (BIOS El Torito, GRUB hybrid
MBR, protective MBR + GPT, the appended EFI system partition with the Secure Boot shim), so
the result boots from CD and USB on BIOS and UEFI like the original. Files are read from the
base with ``xorriso -osirrox`` (never mounted). Changed and added files:

- ``boot/grub/grub.cfg`` and ``boot/grub/loopback.cfg``: every installer ``linux`` line gets
  ``autoinstall ds=nocloud\\;s=/cdrom/nocloud/`` before ``---`` (``;`` escaped for GRUB),
  and grub.cfg's menu ``timeout`` is set from the profile;
- the files of ``add_dir`` (the rendered ``build/<site>/iso/`` tree: ``nocloud/…``,
  ``nodeforge/…``) at the same paths;
- ``md5sum.txt`` refreshed for every changed or added file (casper checks it).

Deterministic: staged files get mtime = SOURCE_DATE_EPOCH (or 0), fixed modes and owner,
and xorriso gets fixed volume dates, GPT GUIDs derived from them and a fixed preparer id,
so the same base and inputs give the same bytes. Bases made by grub-mkrescue carry HFS+,
which replay cannot keep: on that failure we retry with ``-hfsplus off``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from builder import TOOL
from builder.errors import BuilderError, CommandFailed, UsageError
from builder.run import run

log = logging.getLogger("builder.iso")

GRUB_FILES = ("boot/grub/grub.cfg", "boot/grub/loopback.cfg")
MD5SUMS = "md5sum.txt"
# What the installer's kernel must see: `autoinstall ds=nocloud;s=/cdrom/nocloud/`.
# In grub.cfg `;` separates commands, so it is escaped there.
KERNEL_ARGS = "autoinstall ds=nocloud\\;s=/cdrom/nocloud/"
KERNEL_ARGS_SEEN = "autoinstall ds=nocloud;s=/cdrom/nocloud/"
PREPARER_ID = f"{TOOL.upper()} REMASTER"
VOLID_MAX = 32
# What xorriso says when replaying a grub-mkrescue base (HFS+ / APM next to the GPT) fails.
HFS_SIGNS = ("hfs", "cannot set up gpt", "gpt partitions", "apm")

# One replayed appended partition: `-append_partition 2 <type> --interval:imported_iso:A d-B d::…`
_APPENDED_RE = re.compile(
    r"^-append_partition\s+(?P<n>\d+)\s+(?P<type>\S+)\s+"
    r"--interval:imported_iso:(?P<a>\d+)(?P<au>[ds])-(?P<b>\d+)(?P<bu>[ds])::"
)
_UNIT = {"d": 512, "s": 2048}

_LINUX_RE = re.compile(r"^(?P<indent>\s*)(?P<cmd>linux|linuxefi)(?P<sep>\s+)(?P<rest>\S.*?)\s*$")
_TIMEOUT_RE = re.compile(r"^(?P<indent>\s*)set\s+timeout\s*=\s*\S+\s*$")


def check_volume_id(volume_id: str, where: str = "iso.volume_id") -> str:
    """Return ``volume_id`` if it is 1–32 printable ASCII characters, else raise UsageError."""
    if not volume_id or len(volume_id) > VOLID_MAX:
        raise UsageError(
            f"{where}: volume id {volume_id!r} must be 1-{VOLID_MAX} characters "
            f"(has {len(volume_id)})"
        )
    if not all(32 <= ord(c) < 127 for c in volume_id):
        raise UsageError(f"{where}: volume id {volume_id!r} must be printable ASCII")
    return volume_id


def patch_linux_line(line: str) -> str:
    """Add the autoinstall arguments to one ``linux`` line (before ``---``); idempotent."""
    m = _LINUX_RE.match(line.rstrip("\n"))
    if not m:
        return line
    rest = m["rest"]
    if re.search(r"(^|\s)autoinstall(\s|$)", rest):
        return line
    words = rest.split()
    newline = "\n" if line.endswith("\n") else ""
    # words[0] is the kernel path; keep the original spacing up to `---` where possible
    idx = re.search(r"(?:^|\s)---(?:\s|$)", rest)
    if idx and len(words) > 1:
        pos = idx.start() + (1 if rest[idx.start()].isspace() else 0)
        head = rest[:pos].rstrip()
        tail = rest[pos:]
        new_rest = f"{head} {KERNEL_ARGS} {tail}"
    else:
        new_rest = f"{rest} {KERNEL_ARGS}"
    return f"{m['indent']}{m['cmd']}{m['sep']}{new_rest}{newline}"


def patch_grub_cfg(text: str, timeout: int | None) -> str:
    """Patch every installer ``linux`` line; set the menu timeout when ``timeout`` is given."""
    out: list[str] = []
    saw_timeout = False
    for line in text.splitlines(keepends=True):
        if timeout is not None and _TIMEOUT_RE.match(line.rstrip("\n")):
            indent = _TIMEOUT_RE.match(line.rstrip("\n"))["indent"]  # type: ignore[index]
            line = f"{indent}set timeout={timeout}" + ("\n" if line.endswith("\n") else "")
            saw_timeout = True
        out.append(patch_linux_line(line))
    result = "".join(out)
    if timeout is not None and not saw_timeout:
        result = f"set timeout={timeout}\n" + result
    return result


def refresh_md5sums(text: str, changed: dict[str, bytes]) -> str:
    """Update ``md5sum.txt`` lines for ``changed`` (iso path -> new content), add new ones."""
    sums = {p: hashlib.md5(data).hexdigest() for p, data in changed.items()}
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            path = parts[1].strip()
            key = path[2:] if path.startswith("./") else path.lstrip("/")
            if key in sums:
                out.append(f"{sums[key]}  ./{key}")
                seen.add(key)
                continue
        out.append(line)
    for key in sorted(set(sums) - seen):
        out.append(f"{sums[key]}  ./{key}")
    return "\n".join(out) + "\n"


def read_files(base: Path, paths: Iterable[str], dest: Path) -> dict[str, bytes]:
    """Extract ``paths`` (relative to the ISO root) from ``base``; missing ones are absent."""
    return _inspect(base, paths, dest)[0]


def _inspect(base: Path, paths: Iterable[str], dest: Path) -> tuple[dict[str, bytes], str]:
    """``read_files`` plus the base's boot setup as xorriso commands (one xorriso run)."""
    wanted = list(paths)
    dest.mkdir(parents=True, exist_ok=True)
    argv: list[str | os.PathLike[str]] = [
        "xorriso", "-abort_on", "NEVER", "-osirrox", "on", "-indev", drive(base),
        "-report_system_area", "cmd",
    ]  # fmt: skip
    for i, p in enumerate(wanted):
        argv += ["-extract", "/" + p, dest / f"{i}.bin"]
    proc = run(argv, check=False)
    if "Drive current: -indev" not in (proc.stderr or "") and proc.returncode != 0:
        raise CommandFailed(
            f"xorriso cannot read {base}: {_tail(proc.stderr)}", proc.returncode, proc.stderr
        )
    found: dict[str, bytes] = {}
    for i, p in enumerate(wanted):
        f = dest / f"{i}.bin"
        if f.is_file():
            found[p] = f.read_bytes()
    return found, proc.stdout or ""


def appended_partitions(report: str) -> list[tuple[str, str, int, int]] | None:
    """The base's appended partitions from ``-report_system_area cmd``: (number, type,
    byte offset, byte length) each. None when one is not a plain interval of the base
    (growing would not know how to carry it over)."""
    found = []
    for line in report.splitlines():
        if not line.startswith("-append_partition"):
            continue
        m = _APPENDED_RE.match(line)
        if not m:
            return None
        start = int(m["a"]) * _UNIT[m["au"]]
        end = (int(m["b"]) + 1) * _UNIT[m["bu"]]
        found.append((m["n"], m["type"], start, end - start))
    return found


def copy_base(base: Path, out: Path) -> None:
    """Copy ``base`` to ``out`` without passing the bytes through this process:
    ``copy_file_range`` (a reflink where the file system shares extents), else sendfile."""
    with open(base, "rb") as src, open(out, "wb") as dst:
        left = os.fstat(src.fileno()).st_size
        try:
            while left > 0:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 1 << 30))
                if n == 0:
                    break
                left -= n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            shutil.copyfileobj(src, dst, 1 << 20)  # continues from the current offsets
            left = os.fstat(src.fileno()).st_size - dst.tell()
        if left > 0:
            raise BuilderError(f"{base}: shrank while being copied")


def _extract_range(base: Path, start: int, length: int, dest: Path) -> None:
    with open(base, "rb") as src, open(dest, "wb") as dst:
        data = os.pread(src.fileno(), length, start)
        if len(data) != length:
            raise BuilderError(f"{base}: an appended partition lies past the end of the file")
        dst.write(data)


def drive(path: Path) -> str:
    """A file as an xorriso drive address: ``stdio:`` says it is a file, not an optical
    drive (xorriso refuses addresses under /dev without it, e.g. /dev/shm/…)."""
    return f"stdio:{os.fspath(path)}"


def _tail(text: str | None, n: int = 8) -> str:
    return "\n".join((text or "").strip().splitlines()[-n:])


def _epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError as exc:
        raise UsageError(f"SOURCE_DATE_EPOCH: not an integer: {raw!r}") from exc


def _stage(stage: Path, add_dir: Path | None, generated: dict[str, bytes], epoch: int) -> None:
    """Copy the files to add into ``stage`` with normalised modes and mtimes."""
    if add_dir is not None:
        for src in sorted(add_dir.rglob("*")):
            rel = src.relative_to(add_dir)
            dst = stage / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            elif src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                os.chmod(dst, 0o555 if os.stat(src).st_mode & 0o111 else 0o444)
    for name, data in generated.items():
        gen = stage / name
        gen.parent.mkdir(parents=True, exist_ok=True)
        if gen.exists():
            os.chmod(gen, 0o644)
        gen.write_bytes(data)
        os.chmod(gen, 0o444)
    for p in sorted(stage.rglob("*"), reverse=True):
        if p.is_dir():
            os.chmod(p, 0o555)
        os.utime(p, (epoch, epoch), follow_symlinks=False)


def _stamp(epoch: int) -> str:
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))


def remaster_argv(
    base: Path,
    out: Path,
    stage: Path,
    volume_id: str,
    epoch: int,
    hfsplus_off: bool = False,
    grow: Iterable[tuple[str, str, Path]] | None = None,
) -> list[str | os.PathLike[str]]:
    """xorriso's argv: modifying mode (``-indev base -outdev out``: the whole image is
    written), or with ``grow`` (appended partitions: number, type, file) growing mode on
    ``out``, a copy of the base (``-dev out``: one session appended)."""
    dev: list[str | os.PathLike[str]] = ["-indev", drive(base), "-outdev", drive(out)]
    if grow is not None:
        dev = ["-dev", drive(out)]
    argv: list[str | os.PathLike[str]] = [
        "xorriso",
        "-report_about", "WARNING",
        "-stdio_sync", "off",  # no fsync every 32 MiB; the caller fsyncs before its rename
        "-fs", "64m",
        *dev,
        "-boot_image", "any", "replay",
    ]  # fmt: skip
    for number, ptype, path in grow or ():
        argv += ["-append_partition", number, ptype, path]
    argv += [
        "-volid", volume_id,
        "-preparer_id", PREPARER_ID,
        "-volume_date", "uuid", _stamp(epoch),
        "-volume_date", "c", f"={epoch}",
        "-volume_date", "m", f"={epoch}",
        "-volume_date", "all_file_dates", "set_to_mtime",
        "-iso_nowtime", f"={epoch}",
        "-boot_image", "any", "gpt_disk_guid=volume_date_uuid",
    ]  # fmt: skip
    if hfsplus_off:
        argv += ["-hfsplus", "off"]
    tops = sorted(p.name for p in stage.iterdir())
    for p in sorted(stage.rglob("*")):
        if p.is_file():
            argv += ["-map", p, "/" + p.relative_to(stage).as_posix()]
    for top in tops:
        argv += ["-chown_r", "0", "/" + top, "--", "-chgrp_r", "0", "/" + top, "--"]
    # directories created by -map get the staged dirs' attributes; make sure of it
    for p in sorted(stage.rglob("*")):
        if p.is_dir():
            argv += ["-chmod", "0555", "/" + p.relative_to(stage).as_posix(), "--"]
            argv += ["-alter_date", "b", f"={epoch}", "/" + p.relative_to(stage).as_posix(), "--"]
    return argv


def remaster(
    base: Path,
    out: Path,
    add_dir: Path | None = None,
    *,
    volume_id: str,
    grub_timeout: int | None = None,
    workdir: Path | None = None,
    epoch: int | None = None,
) -> dict[str, str]:
    """Write the remastered ISO to ``out`` (which the caller renames into place).

    ``epoch`` (default: SOURCE_DATE_EPOCH, else 0) dates the volume and every added file.
    Returns iso path -> md5 of every file changed or added, for the manifest/logs.
    """
    check_volume_id(volume_id)
    if not base.is_file():
        raise UsageError(f"base ISO not found: {base}")
    if epoch is None:
        epoch = _epoch()
    with tempfile.TemporaryDirectory(prefix="remaster.", dir=workdir) as tmp:
        t = Path(tmp)
        files, report = _inspect(base, [*GRUB_FILES, MD5SUMS], t / "orig")
        if GRUB_FILES[0] not in files:
            raise BuilderError(
                f"{base}: no /{GRUB_FILES[0]} in the ISO",
                hint="is this an Ubuntu live-server ISO (20.04 or later)?",
            )
        generated: dict[str, bytes] = {}
        for rel in GRUB_FILES:
            if rel in files:
                text = files[rel].decode()
                timeout = grub_timeout if rel == GRUB_FILES[0] else None
                generated[rel] = patch_grub_cfg(text, timeout).encode()
        stage = t / "stage"
        stage.mkdir()
        _stage(stage, add_dir, generated, epoch)
        changed = {
            p.relative_to(stage).as_posix(): p.read_bytes()
            for p in sorted(stage.rglob("*"))
            if p.is_file()
        }
        if MD5SUMS in files:
            md5 = refresh_md5sums(files[MD5SUMS].decode(), changed)
            if (stage / MD5SUMS).exists():
                os.chmod(stage / MD5SUMS, 0o644)
            (stage / MD5SUMS).write_text(md5)
            os.chmod(stage / MD5SUMS, 0o444)
            os.utime(stage / MD5SUMS, (epoch, epoch))
        env = {"SOURCE_DATE_EPOCH": str(epoch)}
        log.info("remastering %s -> %s (%s)", base.name, out.name, volume_id)
        if not _grow(base, out, stage, volume_id, epoch, report, t, env):
            _rewrite(base, out, stage, volume_id, epoch, env)
        return {k: hashlib.md5(v).hexdigest() for k, v in changed.items()}


def _grow(
    base: Path,
    out: Path,
    stage: Path,
    volume_id: str,
    epoch: int,
    report: str,
    tmp: Path,
    env: dict[str, str],
) -> bool:
    """Growing mode on a copy of the base; False (and ``out`` emptied) if it cannot be used."""
    parts = appended_partitions(report)
    if parts is None:
        log.info("the base's appended partitions are not plain intervals: rewriting the image")
        return False
    grow: list[tuple[str, str, Path]] = []
    for number, ptype, start, length in parts:
        dest = tmp / f"appended-{number}.img"
        _extract_range(base, start, length, dest)
        grow.append((number, ptype, dest))
    copy_base(base, out)
    try:
        run(remaster_argv(base, out, stage, volume_id, epoch, grow=grow), env=env)
    except CommandFailed as exc:
        log.warning(
            "growing the base failed; writing the whole image instead: %s", _tail(exc.output, 3)
        )
        out.write_bytes(b"")
        return False
    return True


def _rewrite(
    base: Path, out: Path, stage: Path, volume_id: str, epoch: int, env: dict[str, str]
) -> None:
    """Modifying mode: xorriso writes the whole image (the fallback)."""
    try:
        run(remaster_argv(base, out, stage, volume_id, epoch), env=env)
    except CommandFailed as exc:
        if not any(sign in exc.output.lower() for sign in HFS_SIGNS):
            raise
        log.warning("replay failed on the base's HFS+/APM setup; retrying with -hfsplus off")
        out.write_bytes(b"")
        run(remaster_argv(base, out, stage, volume_id, epoch, hfsplus_off=True), env=env)
