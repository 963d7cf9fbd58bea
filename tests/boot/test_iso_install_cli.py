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
machines, each with its own seed and one-time token, and decides "joined" on the hub's side.

Before `--iso` existed `builder boot-test onprem --iso …` was a usage error ("No such
option"); the installed root failed to read its seed before the late-commands fix (see
test_iso_install.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from builder.fsutil import sha256_file
from builder.run import run, which
from builder.targets import seed
from tests.boot.conftest import REPO, node_boot_missing
from tests.support import bootcheck
from tests.support.guestslots import GUESTS, guests_of
from tests.support.reportchecks import check_joined

pytestmark = pytest.mark.boot

_missing = node_boot_missing() + [t for t in ("xorriso", "gzip") if which(t) is None]
if _missing:
    pytest.skip(f"the ISO boot test needs {', '.join(_missing)}", allow_module_level=True)


def _cli(workdir: Path, *args: str, timeout: float = 5400) -> dict[str, Any]:
    """`builder boot-test onprem --json --keep …` as a separate process, holding as many of
    the lane's ``GUESTS`` as it boots at once (the install is one, then ``--nodes``)."""
    with GUESTS.hold(guests_of(args)):
        p = subprocess.run(
            [sys.executable, "-c", "from builder.cli import main; main()",
             "boot-test", "onprem", "--json", "--keep", *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "TMPDIR": str(workdir)},
        )  # fmt: skip
    out: dict[str, Any] = {"rc": p.returncode, "stderr": p.stderr}
    try:
        res = out["result"] = json.loads(p.stdout)
    except ValueError:
        out["result"] = None
        return out
    out["reports"] = [bootcheck.read_report(n["console"]) for n in res["nodes"] if n["joined"]]
    return out


@pytest.fixture(scope="module")
def iso_site(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.standin_iso import prepare_iso_site

    with GUESTS.hold(1):  # reused from the cache, else built: host work of about a core
        return prepare_iso_site("onprem", tmp_path_factory.mktemp("iso-site"))


def test_iso_installs_in_the_guest_and_two_machines_join(iso_site, tmp_path_factory):
    wd = tmp_path_factory.mktemp("iso-cli")
    before = sha256_file(iso_site.iso)
    t0 = time.monotonic()
    out = _cli(
        wd,
        *iso_site.boot_args(),
        "--nodes",
        "2",
        "--no-reboot",
        "--boot-timeout",
        "2400",
        "--install-timeout",
        "3600",
    )
    wall = time.monotonic() - t0
    res = out["result"]
    assert res is not None, out["stderr"][-4000:]
    assert out["rc"] == 0 and res["problems"] == [], "\n".join(res["problems"])
    assert sha256_file(iso_site.iso) == before  # the user's ISO is never written
    console = Path(res["install_console"]).read_text(errors="replace")
    assert "STANDIN-INSTALL-DONE" in console  # the in-guest installer ran to the end
    assert "autoinstall" in console.split("FIXTURE-CMDLINE: ", 1)[1].splitlines()[0]
    nodes = res["nodes"]
    assert [n["node"] for n in nodes] == ["onprem-node1", "onprem-node2"]
    assert all(n["joined"] for n in nodes) and len({n["address"] for n in nodes}) == 2
    for n, r in zip(nodes, out["reports"], strict=True):
        assert r["hostname"] == n["node"]  # from its own seed, not the installer's name
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
