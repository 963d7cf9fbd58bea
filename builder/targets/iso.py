"""Remaster an Ubuntu live-server ISO for unattended install, keeping its hybrid boot.

``remaster(base, out, add_dir, volume_id=…, grub_timeout=…)`` runs one xorriso::

    xorriso -indev BASE -outdev OUT -boot_image any replay -volid … \
            -map <staged file> /<path> …

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
    wanted = list(paths)
    dest.mkdir(parents=True, exist_ok=True)
    argv: list[str | os.PathLike[str]] = [
        "xorriso", "-abort_on", "NEVER", "-osirrox", "on", "-indev", base,
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
    return found


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
    base: Path, out: Path, stage: Path, volume_id: str, epoch: int, hfsplus_off: bool = False
) -> list[str | os.PathLike[str]]:
    argv: list[str | os.PathLike[str]] = [
        "xorriso",
        "-report_about", "WARNING",
        "-stdio_sync", "off",  # no fsync every 32 MiB; the caller fsyncs before its rename
        "-fs", "64m",
        "-indev", base,
        "-outdev", out,
        "-boot_image", "any", "replay",
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
        files = read_files(base, [*GRUB_FILES, MD5SUMS], t / "orig")
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
        try:
            run(remaster_argv(base, out, stage, volume_id, epoch), env=env)
        except CommandFailed as exc:
            if not any(sign in exc.output.lower() for sign in HFS_SIGNS):
                raise
            log.warning("replay failed on the base's HFS+/APM setup; retrying with -hfsplus off")
            out.write_bytes(b"")
            run(remaster_argv(base, out, stage, volume_id, epoch, hfsplus_off=True), env=env)
        return {k: hashlib.md5(v).hexdigest() for k, v in changed.items()}
