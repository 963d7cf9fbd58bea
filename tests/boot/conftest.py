"""Fixtures for the node boot tests: one work directory and one prepared site per session.

The stand-in node disk of a site is built once (and cached across runs under
``$BUILDER_CACHE_DIR``/``~/.cache/nodeforge``, keyed by the hash of its inputs); every boot
in the session runs on its own qcow2 overlay of it.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.run import which

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
