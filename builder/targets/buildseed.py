"""The per-build NoCloud seed for Packer's qemu builder: a throwaway SSH key for the build VM.

(Split from ``builder.targets.packer``, which re-exports ``write_build_seed``.)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from builder.fsutil import atomic_write


def write_build_seed(seed_dir: Path, ssh_username: str) -> Path:
    """Write user-data/meta-data with a fresh ed25519 key; return the private key path (0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    seed_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(seed_dir, 0o700)
    key_path = atomic_write(seed_dir / "build_key", private, mode=0o600)
    atomic_write(
        seed_dir / "user-data",
        "#cloud-config\n"
        "# build-time only: Packer's SSH access; the key is deleted after the build and\n"
        "# cleanup.sh resets cloud-init so instances start from a clean first boot\n"
        "locale: C.UTF-8\n"
        "ssh_pwauth: false\n"
        "users:\n"
        f"  - name: {ssh_username}\n"
        "    shell: /bin/bash\n"
        "    lock_passwd: true\n"
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"\n'
        "    ssh_authorized_keys:\n"
        f"      - {public} nodeforge-packer-build\n",
    )
    atomic_write(
        seed_dir / "meta-data",
        # hostname "localhost": resolvable for sudo without touching /etc/hosts in the image
        f"instance-id: nodeforge-build-{secrets.token_hex(4)}\nlocal-hostname: localhost\n",
    )
    return key_path
