"""Fixtures for the node boot tests: one work directory and one prepared site per session.

The stand-in node disk of a site is built once (and cached across runs under
``$BUILDER_CACHE_DIR``/``~/.cache/nodeforge``, keyed by the hash of its inputs); every boot
in the session runs on its own qcow2 overlay of it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.run import which
from tests.support import bootcheck

REPO = Path(__file__).resolve().parents[2]

NODE_BOOT_TOOLS = (
    "qemu-system-x86_64", "qemu-img", "ip", "wg", "wg-quick", "wireguard-go", "mmdebstrap",
    "mkfs.ext4", "dpkg-deb", "dpkg-scanpackages", "gpg", "unshare", "grub-mkimage",
    "mkfs.vfat", "mcopy", "sfdisk",
)  # fmt: skip


def node_boot_missing() -> list[str]:
    missing = [t for t in NODE_BOOT_TOOLS if which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces, chroot)")
    return missing


@pytest.fixture(scope="session")
def boot_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-boot")


@pytest.fixture(scope="session")
def boot_pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Scenarios run side by side (each guest is one vCPU; TCG uses one host thread each)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="boot") as pool:
        yield pool


def cli_boot_test(site: str, workdir: Path, *args: str) -> dict[str, Any]:
    """`builder boot-test SITE --json --keep` + the stand-in disk's options (which wait for
    the check program's report); the reports are read back from the consoles it keeps.
    The timeout is above the command's own (900 s a boot, a first boot and a reboot): 1200 s
    cut a two-node run with its reboot short at load ~30 (2026-11-30)."""
    p = subprocess.run(
        [sys.executable, "-c", "from builder.cli import main; main()",
         "boot-test", site, "--json", "--keep", *args],
        cwd=REPO, capture_output=True, text=True, timeout=2400,
        env={**os.environ, "TMPDIR": str(workdir)},
    )  # fmt: skip
    out: dict[str, Any] = {"rc": p.returncode, "stderr": p.stderr}
    try:
        res = out["result"] = json.loads(p.stdout)
    except ValueError:
        out["result"] = None
        return out
    out["reports"] = [bootcheck.read_report(n["console"]) for n in res["nodes"] if n["joined"]]
    if res.get("reboot"):
        out["reboot_report"] = bootcheck.read_report(res["reboot"]["console"])
    return out
