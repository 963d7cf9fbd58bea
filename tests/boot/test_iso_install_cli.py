"""`builder boot-test SITE --iso ISO`: the site's ISO installs itself in a guest, then the
installed disk boots and joins the real hub.

The ISO is the onprem site's, built by the real pipeline (render, verify, remaster) from the
stand-in live ISO (tests/support/ubuntu_like_iso.py) carrying a stand-in installed root
(tests/support/standin_iso.py). Its busybox STAND-IN installer, seeing ``autoinstall`` on
the command line the remaster put there and a blank disk, writes the root to the disk and
runs the same subiquity/curtin steps as the host-side stand-in installer
(tests/support/standin_installer.py: subiquity's cloud-init files, then OUR rendered
late-commands, provisioning included, through `curtin in-target`), then reboots. The CLI
boots the installed disk (direct kernel boot: the stand-in root has no boot loader) as two
machines, each seeded with only what `builder seed` writes (`--node-seed-only`: host name,
one-time token, `--static`'s address), so what makes them nodes comes from the installed
system itself, and decides "joined" on the hub's side: one ISO, two seeds, two nodes.

Before `--iso` existed `builder boot-test onprem --iso …` was a usage error ("No such
option"); the installed root failed to read its seed before the late-commands fix (see
test_iso_install.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builder.fsutil import sha256_file
from builder.run import run, which
from builder.targets import seed
from tests.boot.conftest import node_boot_missing
from tests.support.reportchecks import check_joined

pytestmark = pytest.mark.boot

_missing = node_boot_missing() + [t for t in ("xorriso", "gzip") if which(t) is None]
if _missing:
    pytest.skip(f"the ISO boot test needs {', '.join(_missing)}", allow_module_level=True)


@pytest.fixture(scope="module")
def iso_cli(iso_cli_run) -> dict[str, Any]:
    """The `--iso` run, queued at the session's start (conftest.iso_cli_run)."""
    return iso_cli_run.result()


def test_iso_installs_in_the_guest_and_two_machines_join(iso_cli):
    out, iso_site, wall = iso_cli, iso_cli["site"], iso_cli["wall"]
    res = out["result"]
    assert res is not None, out["stderr"][-4000:]
    assert out["rc"] == 0 and res["problems"] == [], "\n".join(res["problems"])
    assert sha256_file(iso_site.iso) == out["iso_sha256"]  # the user's ISO is never written
    console = Path(res["install_console"]).read_text(errors="replace")
    assert "STANDIN-INSTALL-DONE" in console  # the in-guest installer ran to the end
    assert "autoinstall" in console.split("FIXTURE-CMDLINE: ", 1)[1].splitlines()[0]
    nodes = res["nodes"]
    assert [n["node"] for n in nodes] == ["onprem-node1", "onprem-node2"]
    assert all(n["joined"] for n in nodes) and len({n["address"] for n in nodes}) == 2
    for n, r in zip(nodes, out["reports"], strict=True):
        assert r["hostname"] == n["node"]  # from its own seed, not the installer's onprem-node
        assert r["addresses"]["eth0"] == [res["static_addresses"][n["node"]]]  # the seed's
        assert check_joined(r, iso_site.expect) == []  # provisioned by the late-commands
    t = res["timings"]
    print(f"\n--iso: install {t['install']} s, first boot {t['first_boot']} s, joined after "
          f"{'/'.join(str(n['seconds_to_joined']) for n in nodes)} s, CLI wall {wall:.0f} s, "
          f"ISO prep {iso_site.seconds}")  # fmt: skip


def test_seed_files_reads_a_builder_seed_volume(tmp_path):
    """`--seed`: the NoCloud files of a `builder seed` volume, read with xorriso."""
    from builder.boottest import install
    from builder.errors import UsageError

    theirs = seed.node_seed(site="onprem", hostname="n1", token="t")
    vol = seed.write_seed(tmp_path / "seed.iso", theirs)
    got = install.seed_files(vol, tmp_path / "wd")
    assert got["meta-data"] == theirs["meta-data"]
    assert install.seed_hostname(got) == "n1"
    other = tmp_path / "other.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-o", other, vol.parent / "wd"])
    with pytest.raises(UsageError, match="no meta-data"):
        install.seed_files(other, tmp_path / "wd2")
