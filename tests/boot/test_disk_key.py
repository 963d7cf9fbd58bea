"""The stand-in node disk's cache key is the same in two clean clones of one commit.

A disk is rebuilt (minutes under TCG) whenever its key (``nodedisk.disk_key``: the hash of
the rendered tree's files/ and scripts/, the installer's inputs, the stand-in packages and
the check program) differs. Two clean clones render in two directories, each with profiles
of its own and without the generated ``.secrets`` (not in git): nothing of that may reach
the key. A site with an admin password is the case that differed (a random salt per
profiles directory: a new password hash in every clone's installed disk).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import PROFILES
from tests.support import nodedisk

pytestmark = pytest.mark.boot

TARBALL = Path("bookworm-0000000000000000.tar")  # the key takes the root's name only


def _clone_keys(base: Path, site: str, overrides: list[str]) -> dict[str, str]:
    """Render ``site`` like prepare_site does in a fresh "clone" at ``base`` (its own copy of
    the shipped profiles, no .secrets) and return the disk keys of both recipes."""
    profiles = base / "checkout" / "profiles"
    shutil.copytree(PROFILES, profiles, ignore=shutil.ignore_patterns(".secrets"))
    _lab, profile, tree = nodedisk.render_standin(site, base / "work", profiles, overrides)
    versions = nodedisk.standin_versions(profile)
    return {
        kind: nodedisk.disk_key(TARBALL, tree, versions, kind) for kind in ("disk", "installed")
    }


@pytest.mark.parametrize("site", ["aws", "onprem"])
@pytest.mark.parametrize("password", [False, True], ids=["no-password", "admin-password"])
def test_two_clean_clones_give_the_same_disk_key(
    site: str, password: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = []
    if password:
        monkeypatch.setenv("NF_TEST_ADMIN_PASSWORD", "test-only-password")
        overrides.append("admin.password=env:NF_TEST_ADMIN_PASSWORD")
    one = _clone_keys(tmp_path / "clone1", site, overrides)
    two = _clone_keys(tmp_path / "clone2", site, overrides)
    assert one == two
    if password:  # the password is in the installed disk (its key), not in the provisioned one
        auto = (tmp_path / "clone1/work/build" / site / "cloud-init/autoinstall.yaml").read_text()
        assert "$6$rounds=656000$" + nodedisk.STANDIN_SALT + "$" in auto


def test_a_change_in_the_disk_changes_the_key(tmp_path: Path) -> None:
    """Control: the key is not blind (a changed provisioning script is a new disk)."""
    profiles = tmp_path / "profiles"
    shutil.copytree(PROFILES, profiles, ignore=shutil.ignore_patterns(".secrets"))
    _lab, profile, tree = nodedisk.render_standin("aws", tmp_path / "work", profiles)
    versions = nodedisk.standin_versions(profile)
    before = nodedisk.disk_key(TARBALL, tree, versions)
    script = next(iter(sorted((tree / "scripts").glob("*.sh"))))
    script.write_text(script.read_text() + "\n# changed\n")
    assert nodedisk.disk_key(TARBALL, tree, versions) != before


def test_two_packer_builds_ask_for_the_same_package_layer(tmp_path: Path) -> None:
    """The packer-built qcow2 of the boot lane: ``builder image`` reuses the installed package
    set (a layer keyed by, among others, the repository URLs). Two builds render the same
    layer key, so the second reuses the first's layer (an ephemeral port for the stand-in
    repository made a new URL, so a new layer, in every build)."""
    from builder.boottest import hub_overrides
    from builder.boottest.site import lab_identity
    from builder.targets import layers
    from tests.support import packerimage

    repo = packerimage.standin_repo()
    port = packerimage.repo_port(repo)
    if (str(repo.path.parent), port) not in packerimage._SERVERS:  # not served by this lane
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is taken by another process (another lane?)")
    sets = hub_overrides(lab_identity("aws", None, ()))
    keys, urls = [], []
    for n in (1, 2):
        tree = tmp_path / f"build{n}" / "aws"
        with packerimage.served_render("aws", tree, sets):
            pkrvars = json.loads((tree / "packer" / "site.auto.pkrvars.json").read_text())
        keys.append(layers.layer_key(layers.layer_inputs(tree, pkrvars, "base-sha256")))
        urls.append([e for e in pkrvars["provision_env"] if e.startswith("NF_K8S_APT_URL=")])
    assert urls[0] == urls[1] == [f"NF_K8S_APT_URL=http://10.0.2.2:{port}/{repo.path.name}/"]
    assert keys[0] == keys[1]
