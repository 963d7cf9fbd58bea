"""Secrets in the rendered tree (issue 14, findings 3 and 4).

3: the admin password hash's salt is random, created once per site and kept in
   ``<profiles dir>/.secrets/<site>.salt`` (0600): never computable from the password,
   and renders stay byte-identical because the salt is stored.
4: every rendered file that carries the site enrollment token is 0600.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from passlib.hash import sha512_crypt

from builder.site import render
from builder.site.profile import load_profile

PASSWORD = "correct horse battery staple"
TOKEN = "nf-site-token-4b2f9c1e7d"


def autoinstall_hash(tree: Path) -> str:
    auto = yaml.safe_load((tree / "cloud-init/autoinstall.yaml").read_text())
    return str(auto["identity"]["password"])


def crypt_salt(hashed: str) -> str:
    # $6$rounds=656000$<salt>$<digest>
    parts = hashed.split("$")
    assert parts[1] == "6" and parts[2] == "rounds=656000", hashed
    return parts[3]


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("NF_PW", PASSWORD)
    return ["admin.password=env:NF_PW"]


def test_salt_file_is_created_once_0600_and_used(workdir: Path, password: list[str]) -> None:
    salt_file = workdir / "profiles/.secrets/onprem.salt"
    assert not salt_file.exists()
    tree = render.render_site(load_profile("onprem", overrides=password)).path
    assert salt_file.is_file()
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(salt_file.parent.stat().st_mode) == 0o700
    salt = salt_file.read_text().strip()
    hashed = autoinstall_hash(tree)
    assert crypt_salt(hashed) == salt
    assert sha512_crypt.verify(PASSWORD, hashed)
    first = (tree / "cloud-init/autoinstall.yaml").read_bytes()
    again = render.render_site(load_profile("onprem", overrides=password)).path
    assert (again / "cloud-init/autoinstall.yaml").read_bytes() == first  # byte-identical
    assert salt_file.read_text().strip() == salt  # created once


def test_a_stored_salt_is_used_as_is(workdir: Path, password: list[str]) -> None:
    secrets = workdir / "profiles/.secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "onprem.salt").write_text("abcdefghABCDEFGH\n")
    os.chmod(secrets / "onprem.salt", 0o600)
    tree = render.render_site(load_profile("onprem", overrides=password)).path
    # an independent computation: passlib with the stored salt and the documented rounds
    want = sha512_crypt.using(salt="abcdefghABCDEFGH", rounds=656000).hash(PASSWORD)
    assert autoinstall_hash(tree) == want


def test_salt_is_not_derivable_from_the_password(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, password: list[str]
) -> None:
    """Same site name, same password, two profile directories: two unrelated salts."""
    first = autoinstall_hash(render.render_site(load_profile("onprem", overrides=password)).path)
    other = tmp_path_factory.mktemp("other-site-dir")
    shutil.copytree(workdir / "profiles", other / "profiles", ignore=shutil.ignore_patterns(".*"))
    os.chdir(other)
    second = autoinstall_hash(render.render_site(load_profile("onprem", overrides=password)).path)
    assert crypt_salt(first) != crypt_salt(second)
    assert first != second
    assert sha512_crypt.verify(PASSWORD, first) and sha512_crypt.verify(PASSWORD, second)


def test_no_password_needs_no_salt(workdir: Path) -> None:
    tree = render.render_site(load_profile("onprem")).path
    assert autoinstall_hash(tree) == "!"
    assert not (workdir / "profiles/.secrets").exists()


def test_a_malformed_salt_file_is_a_clear_error(workdir: Path, password: list[str]) -> None:
    from builder.errors import BuilderError

    secrets = workdir / "profiles/.secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "onprem.salt").write_text("not a salt!\n")
    with pytest.raises(BuilderError) as exc:
        render.render_site(load_profile("onprem", overrides=password))
    assert exc.value.message.startswith("profiles/.secrets/onprem.salt: not a salt")
    assert not (workdir / "build/onprem").exists()


def test_every_file_carrying_the_site_token_is_0600(workdir: Path) -> None:
    (workdir / "tok").write_text(TOKEN + "\n")
    profile = load_profile("onprem", overrides=["enrollment.site_token=file:tok"])
    tree = render.render_site(profile).path
    carriers = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = str(path.relative_to(tree))
        mode = stat.S_IMODE(path.stat().st_mode)
        if TOKEN.encode() in path.read_bytes():
            carriers.append(rel)
            assert mode == 0o600, f"{rel} carries the token at {oct(mode)}"
    # the token really is where the node needs it (so the scan above saw something)
    assert "cloud-init/user-data" in carriers
    assert "cloud-init/autoinstall.yaml" in carriers
    assert "iso/nocloud/user-data" in carriers
    assert "files/etc/nodeforge/enroll-token" in carriers
    assert "profile.json" not in carriers


def test_without_a_token_the_tree_stays_world_readable(workdir: Path) -> None:
    tree = render.render_site(load_profile("onprem")).path
    for rel in ("cloud-init/user-data", "cloud-init/autoinstall.yaml", "iso/nocloud/user-data"):
        assert stat.S_IMODE((tree / rel).stat().st_mode) == 0o644, rel
