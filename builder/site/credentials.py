"""Secrets in the rendered tree: the admin password hash with its per-site salt, and the
0600 mode of every file that carries the site enrollment token.

The salt is random, created once per site in ``<profiles dir>/.secrets/<site>.salt``
(0600 in a 0700 directory, beside the site's ``file:`` secrets) and reused, so renders
stay byte-identical; it is never computed from the password, so an image does not let
anyone test password guesses without paying the crypt's cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from builder.errors import BuilderError

from .common import display_path
from .profile import Profile

log = logging.getLogger("builder.render")

CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SALT_LENGTH = 16  # the most SHA-512 crypt uses
CRYPT_ROUNDS = 656000  # passlib 1.7 sha512_crypt.default_rounds (checked 2026-11-30)


def password_hash(profile: Profile) -> str:
    """SHA-512 crypt of the admin password with the site's stored random salt.

    The salt is never computed from the password (anyone holding an image could then test
    guesses without paying the crypt's cost); it is created once per site by
    ``site_salt`` and kept, so renders stay byte-identical.
    No password configured -> ``!`` (a locked password: ssh keys only).
    """
    secret = profile.resolve_secret("admin.password")
    if not secret:
        return "!"
    from passlib.hash import sha512_crypt

    salt = site_salt(profile)
    return str(sha512_crypt.using(salt=salt, rounds=CRYPT_ROUNDS).hash(secret))


def salt_file(profile: Profile) -> Path:
    """``<profiles dir>/.secrets/<site>.salt``: beside the site profile, 0600 in a 0700 dir."""
    return profile.secrets_dir / f"{profile.site}.salt"


def site_salt(profile: Profile) -> str:
    """The site's crypt salt: read from ``salt_file``, created (random, 0600) when absent."""
    path = salt_file(profile)
    shown = display_path(path)
    if not path.exists():
        _create_salt(path)
    try:
        salt = path.read_text().strip()
    except OSError as exc:
        raise BuilderError(f"{shown}: cannot read the site's salt: {exc.strerror}") from None
    if len(salt) != SALT_LENGTH or any(c not in CRYPT_ALPHABET for c in salt):
        raise BuilderError(
            f"{shown}: not a salt ({SALT_LENGTH} characters of ./0-9A-Za-z)",
            hint="delete it and render again: a new salt is created (the password hash "
            "changes, the password does not)",
        )
    return salt


def _create_salt(path: Path) -> None:
    salt = "".join(secrets.choice(CRYPT_ALPHABET) for _ in range(SALT_LENGTH))
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".salt.", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(salt + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another render made it first
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise BuilderError(
            f"{display_path(path)}: cannot create the site's salt: {exc.strerror}",
            hint=f"create it yourself: {SALT_LENGTH} random characters of ./0-9A-Za-z, mode 0600",
        ) from None
    log.info("created %s (the admin password's salt for this site; keep it)", path)


# the files that embed every overlay file (the site token among them)
USER_DATA_CARRIERS = (
    "cloud-init/user-data",
    "cloud-init/autoinstall.yaml",
    "iso/nocloud/user-data",
)


def protect_secrets(files: dict[str, tuple[bytes, int]], token: str | None) -> None:
    """Make every file that carries the site token 0600 (in place)."""
    if not token:
        return
    needle = token.encode()
    for rel, (data, _) in files.items():
        if rel in USER_DATA_CARRIERS or needle in data:
            files[rel] = (data, 0o600)


def secret_files(files: Mapping[str, tuple[bytes, int]]) -> tuple[str, ...]:
    """The files of a tree that carry a secret: the ones rendered 0600."""
    return tuple(sorted(rel for rel, (_, mode) in files.items() if mode & 0o077 == 0))
