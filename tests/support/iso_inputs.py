"""The ``build/<site>/iso/`` tree the iso target adds to the base ISO, for tests.

A small tree shaped like builder.render's output (INTERFACES.md: ``iso/nocloud/user-data``,
``iso/nocloud/meta-data``, ``iso/nodeforge/scripts/…``), with fixed content.
"""

from __future__ import annotations

import os
from pathlib import Path

USER_DATA = """\
#cloud-config
autoinstall:
  version: 1
  identity: {hostname: node, username: ops, password: "!"}
  late-commands:
    - curtin in-target -- bash /cdrom/nodeforge/scripts/configure-node.sh
"""


def iso_tree(root: Path, user_data: str = USER_DATA) -> Path:
    iso = root / "iso"
    (iso / "nocloud").mkdir(parents=True, exist_ok=True)
    (iso / "nodeforge" / "scripts").mkdir(parents=True, exist_ok=True)
    (iso / "nocloud" / "user-data").write_text(user_data)
    (iso / "nocloud" / "meta-data").write_text("instance-id: nodeforge-test\n")
    script = iso / "nodeforge" / "scripts" / "configure-node.sh"
    script.write_text("#!/bin/bash\nset -euo pipefail\necho configured\n")
    os.chmod(script, 0o755)
    return iso


def fixture_overrides(base: Path, *extra: str) -> list[str]:
    """--set values that point the onprem profile at the stand-in base ISO (pinned sha256)."""
    from builder.fsutil import sha256_file

    return [
        f"iso.base.url=file://{base}",
        f"iso.base.sha256={sha256_file(base)}",
        "iso.base.sha256sums_url=null",
        "iso.grub_timeout=1",
        *extra,
    ]
