"""The TEST-ONLY guest check program (``guest/``): where it goes in a disk, and its report.

``guest/nodeforge_bootcheck.py`` and ``guest/nodeforge-bootcheck.service`` are real files
(ruff and mypy check them). ``install(root)`` puts them into a node root; a booted guest
prints one ``NODEFORGE-BOOTCHECK sha=<12 hex> <json>`` line on its serial console, which
``parse_report`` reads back. The product (``builder boot-test``) knows nothing of them: the
tests hand it ``CONSOLE_MARKER`` to wait for, then read the consoles it leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from builder.errors import BuilderError

GUEST_DIR = Path(__file__).resolve().parent / "guest"
SCRIPT = GUEST_DIR / "nodeforge_bootcheck.py"
UNIT = GUEST_DIR / "nodeforge-bootcheck.service"
SCRIPT_IN_ROOT = "/usr/lib/nodeforge-test/nodeforge-bootcheck"
UNIT_IN_ROOT = "/etc/systemd/system/nodeforge-bootcheck.service"
# TEST-ONLY STAND-IN of an NVIDIA GPU (stand-in node disks only, not baseimage.py's real
# images): active only with the kernel argument nodeforge.standin.gpu=1|nodriver
STANDIN_GPU_SCRIPT = GUEST_DIR / "nodeforge_standin_gpu.sh"
STANDIN_GPU_UNIT = GUEST_DIR / "nodeforge-standin-gpu.service"
STANDIN_GPU_SCRIPT_IN_ROOT = "/usr/lib/nodeforge-test/nodeforge-standin-gpu"
STANDIN_GPU_UNIT_IN_ROOT = "/etc/systemd/system/nodeforge-standin-gpu.service"
STANDIN_GPU_ARG = "nodeforge.standin.gpu"
MARKER = "NODEFORGE-BOOTCHECK"
CONSOLE_MARKER = rf"^{MARKER} sha="


def files() -> list[tuple[str, bytes, int]]:
    """(path in the root, content, mode) of the check program and its unit."""
    return [(SCRIPT_IN_ROOT, SCRIPT.read_bytes(), 0o755), (UNIT_IN_ROOT, UNIT.read_bytes(), 0o644)]


def standin_gpu_files() -> list[tuple[str, bytes, int]]:
    """(path in the root, content, mode) of the STAND-IN GPU program and its unit."""
    return [
        (STANDIN_GPU_SCRIPT_IN_ROOT, STANDIN_GPU_SCRIPT.read_bytes(), 0o755),
        (STANDIN_GPU_UNIT_IN_ROOT, STANDIN_GPU_UNIT.read_bytes(), 0o644),
    ]


def digest() -> bytes:
    """What a cached disk depends on: all of these files."""
    return hashlib.sha256(b"".join(data for _, data, _ in files() + standin_gpu_files())).digest()


def install(root: Path) -> None:
    """Copy the check program, the STAND-IN GPU and their units into ``root``; enable both
    (the stand-in GPU unit does nothing without its kernel argument)."""
    for path, data, mode in files() + standin_gpu_files():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
    for target, unit in (("multi-user", UNIT_IN_ROOT), ("sysinit", STANDIN_GPU_UNIT_IN_ROOT)):
        wants = root / f"etc/systemd/system/{target}.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / Path(unit).name
        if not link.is_symlink():
            link.symlink_to(unit)


def parse_report(console: str) -> dict[str, Any]:
    """The guest's JSON report from its console (the last complete marker line)."""
    found = None
    for m in re.finditer(rf"^{MARKER} sha=([0-9a-f]{{12}}) (\{{.*\}})\s*$", console, re.M):
        found = m
    if found is None:
        raise BuilderError(f"no {MARKER} report on the serial console")
    body = found.group(2)
    if hashlib.sha256(body.encode()).hexdigest()[:12] != found.group(1):
        raise BuilderError(f"{MARKER} report garbled on the serial console (checksum mismatch)")
    return json.loads(body)  # type: ignore[no-any-return]


def read_report(console: str | Path) -> dict[str, Any]:
    """``parse_report`` of a console log file, with the file's path under ``_console``."""
    rep = parse_report(Path(console).read_text(errors="replace"))
    rep["_console"] = str(console)
    return rep
