"""Fixtures for the node boot tests: one work directory and one prepared site per session.

The stand-in node disk of a site is built once (and cached across runs under
``$BUILDER_CACHE_DIR``/``~/.cache/nodeforge``, keyed by the hash of its inputs); every boot
in the session runs on its own qcow2 overlay of it.

Both cores, never more than 2 guests: when test_node_boot.py is selected, its scenarios are
queued in the boot pool at the start of the session (``_node_boot_early``) and boot while
the ISO modules run in the test thread; every boot of the lane, in the pool or in the test
thread, first takes its guests from ``guestslots.GUESTS`` (one cap for the process).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.run import which
from tests.support import bootcheck, nodedisk, packerimage, scenarios
from tests.support.guestslots import GUESTS, guests_of

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
    """Scenarios run side by side (each guest is one vCPU; TCG uses one host thread each).
    A worker per scenario: a worker waits for its inputs and then for its guests
    (``GUESTS``), which is what limits how many boot at once."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=12, thread_name_prefix="boot") as pool:
        yield pool


def cli_boot_test(site: str, workdir: Path, *args: str) -> dict[str, Any]:
    """`builder boot-test SITE --json --keep` + the stand-in disk's options (which wait for
    the check program's report); the reports are read back from the consoles it keeps.
    The timeout is above the command's own (900 s a boot, a first boot and a reboot): 1200 s
    cut a two-node run with its reboot short at load ~30 (2026-11-30). Takes as many
    ``GUESTS`` as the command boots at once (``--nodes``) for its whole run."""
    with GUESTS.hold(guests_of(args)):
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


def cli_boot_plain(site: str, workdir: Path, *args: str) -> dict[str, Any]:
    """`builder boot-test SITE --json` for an image without the check program."""
    with GUESTS.hold(guests_of(args)):
        p = subprocess.run(
            [sys.executable, "-c", "from builder.cli import main; main()",
             "boot-test", site, "--json", "--keep", *args],
            cwd=REPO, capture_output=True, text=True, timeout=2400,
            env={**os.environ, "TMPDIR": str(workdir)},
        )  # fmt: skip
    try:
        res = json.loads(p.stdout)
    except ValueError:
        res = None
    return {"rc": p.returncode, "stderr": p.stderr, "result": res}


@pytest.fixture
def one_guest() -> Iterator[None]:
    """The test boots one guest at a time: it holds one of the lane's ``GUESTS``."""
    with GUESTS.hold(1):
        yield


def holding(guests: int, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)`` with ``guests`` of the lane's guests held."""
    with GUESTS.hold(guests):
        return fn(*args, **kw)


# -- test_node_boot.py's inputs and scenarios: session-wide, queued at the session's start --
NODE_BOOT_SITES = ("aws", "onprem")


@pytest.fixture(scope="session")
def qcow2_build(boot_workdir: Path, boot_pool) -> concurrent.futures.Future | None:
    """The real packer build of the aws site as a qcow2 (one guest: Packer's), shared by the
    two boots of it; None without packer."""
    if which("packer") is None:
        return None
    return boot_pool.submit(holding, 1, packerimage.build_qcow2, "aws", boot_workdir / "qcow2")


@pytest.fixture(scope="session")
def setup_futures(boot_workdir: Path, boot_pool) -> dict[str, concurrent.futures.Future]:
    """The stand-in sites (reused from the cache, else built: host work of about a core,
    so it holds one slot)."""
    return {
        s: boot_pool.submit(holding, 1, nodedisk.prepare_site, s, boot_workdir / f"prep-{s}")
        for s in NODE_BOOT_SITES
    }


@pytest.fixture(scope="session")
def setups(setup_futures) -> dict[str, nodedisk.StandinSite]:
    return {s: f.result() for s, f in setup_futures.items()}


@pytest.fixture(scope="session")
def runs(
    qcow2_build, setup_futures, boot_workdir: Path, boot_pool
) -> dict[str, concurrent.futures.Future]:
    """Every scenario of test_node_boot.py as a future. Each waits for its inputs in its own
    worker, then for its guests; queued longest first (the first in line is served first)."""

    def wd(name: str) -> Path:
        d = boot_workdir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def site(name: str) -> nodedisk.StandinSite:
        return setup_futures[name].result()

    def aws_cli() -> dict[str, Any]:
        # the two CLI nodes also reach each other through the hub (the check program's peers)
        two = site("aws").boot_args()
        two[two.index("--append") + 1] += " nodeforge.bootcheck.peers=2"
        return cli_boot_test("aws", wd("cli"), *two, "--nodes", "2")

    def onprem_uefi() -> dict[str, Any]:
        args = site("onprem").boot_args(uefi=True)
        return cli_boot_test("onprem", wd("onprem-uefi"), *args, "--no-reboot")

    def one(fn: Callable[..., Any], name: str, workdir: str, **kw: Any) -> Any:
        s = site(name)
        return holding(1, fn, s, wd(workdir), **kw)

    out = {
        "aws-cli": boot_pool.submit(aws_cli),
        "hub-late": boot_pool.submit(
            one, scenarios.run_hub_late, "onprem", "late", standin_gpu=True
        ),  # fmt: skip
        "onprem-uefi": boot_pool.submit(onprem_uefi),
        "expired": boot_pool.submit(one, scenarios.run_expired_token, "aws", "expired"),
        "no-token": boot_pool.submit(one, scenarios.run_no_seed_no_token, "aws", "no-token"),
    }
    if qcow2_build is not None:  # after the packer build (the reboot is proven above)
        build = qcow2_build

        def qcow2_cli() -> dict[str, Any]:
            return cli_boot_plain("aws", wd("qcow2-cli"), *build.result().boot_args(),
                                  "--no-reboot")  # fmt: skip

        def site_token() -> dict[str, Any]:
            img = build.result()
            return holding(2, scenarios.run_site_token_no_seed, img, wd("site-token"))

        out["qcow2-cli"] = boot_pool.submit(qcow2_cli)
        out["site-token"] = boot_pool.submit(site_token)
    return out


@pytest.fixture(scope="session", autouse=True)
def _node_boot_early(request: pytest.FixtureRequest) -> None:
    """Queue test_node_boot.py's scenarios at the session's start when any of its tests is
    selected (they boot beside the modules before it); an error shows in its own tests."""
    if not any(item.path.name == "test_node_boot.py" for item in request.session.items):
        return
    if node_boot_missing():
        return
    # an error is raised again by the fixture in test_node_boot's own tests
    with contextlib.suppress(Exception):
        request.getfixturevalue("runs")
