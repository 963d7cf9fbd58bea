"""``packer validate`` of a rendered tree for ``builder validate`` (both Packer targets)."""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from builder.errors import BuilderError
from builder.targets.packer import PKRVARS, TARGETS, packer_version, validate_packer


def check_packer_tree(tree: Path) -> list[str]:
    """``packer validate`` a rendered tree for both Packer targets, offline, both at once.

    Returns problems as ``file: message`` lines (empty when valid), for ``builder validate``.
    A remote qemu base image is replaced by a local placeholder: fetching its checksum file
    is a download, not validation.
    """
    packer_version()  # asked once, before the threads

    def one(target: str) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="nf-pkr-validate-") as tmp:
            extra: dict[str, str] = {}
            if target == "qcow2":
                placeholder = Path(tmp) / "base.img"
                placeholder.write_bytes(b"")
                extra = {
                    "qemu_base_image_url": str(placeholder),
                    "qemu_base_image_checksum": "none",
                }
            try:
                validate_packer(tree, target, extra_vars=extra, dist_dir=Path(tmp) / "dist")
            except BuilderError as exc:
                return [
                    f"{tree / PKRVARS}: packer validate ({target}): {line}"
                    for line in exc.message.splitlines()[1:]
                    if line.strip()
                ] or [f"{tree / PKRVARS}: {exc.message}"]
        return []

    with ThreadPoolExecutor(max_workers=len(TARGETS), thread_name_prefix="packer") as pool:
        results = list(pool.map(one, TARGETS))  # in TARGETS order: the report reads the same
    return [line for problems in results for line in problems]
