"""Fixtures for the node boot tests: one work directory and one prepared site per session.

The stand-in node disk of a site is built once (and cached across runs under
``$BUILDER_CACHE_DIR``/``~/.cache/nodeforge``, keyed by the hash of its inputs); every boot
in the session runs on its own qcow2 overlay of it.

Both cores, never more than 2 guests: the long runs of the selected modules (test_node_boot's
scenarios, test_iso_install's host-side installs, test_iso_install_cli's `--iso`
run) are queued in the boot pool at the start of the session (``_boot_early``), so they
boot side by side until the lane's end; their tests only wait for them and check. The short
boots of test_iso_boot and test_qemu_runner run in the test thread first (the collection
puts the modules that wait last). Every boot of the lane, in the pool or in the test
thread, first takes its guests from ``guestslots.GUESTS`` (one cap for the process).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.run import which
from tests.support import bootcheck, guestgate, nodedisk, packerimage, scenarios
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
    with concurrent.futures.ThreadPoolExecutor(max_workers=24, thread_name_prefix="boot") as pool:
        yield pool


def gated(
    workdir: Path, args: tuple[str, ...]
) -> contextlib.AbstractContextManager[dict[str, str]]:
    """The environment of a `builder boot-test` subprocess whose guests each take a slot of
    ``GUESTS`` when they start (tests/support/guestgate.py): it starts with the guests the
    command boots side by side first (``--iso``: the install alone; else its ``--nodes``,
    which must see each other) and gives back what its one-guest phases do not use."""
    return guestgate.gate(workdir, 1 if "--iso" in args else guests_of(args))


def cli_boot_test(site: str, workdir: Path, *args: str, timeout: float = 2400) -> dict[str, Any]:
    """`builder boot-test SITE --json --keep` + the stand-in disk's options (which wait for
    the check program's report); the reports are read back from the consoles it keeps.
    The timeout is above the command's own (900 s a boot, a first boot and a reboot): 1200 s
    cut a two-node run with its reboot short at load ~30 (2026-11-30). Takes as many
    ``GUESTS`` as it runs or starts guests (``gated``)."""
    with gated(workdir, args) as env:
        p = subprocess.run(
            [sys.executable, "-c", "from builder.cli import main; main()",
             "boot-test", site, "--json", "--keep", *args],
            cwd=REPO, capture_output=True, text=True, timeout=timeout,
            env={**env, "TMPDIR": str(workdir)},
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
    with gated(workdir, args) as env:
        p = subprocess.run(
            [sys.executable, "-c", "from builder.cli import main; main()",
             "boot-test", site, "--json", "--keep", *args],
            cwd=REPO, capture_output=True, text=True, timeout=2400,
            env={**env, "TMPDIR": str(workdir)},
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
# a hub that is not the lab's (RFC 6761 reserves .test: never resolves, nothing leaves the
# lab's namespace anyway)
OTHER_HUB_URL = "https://hub.example.test:8443"


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

    def other_hub() -> dict[str, Any]:
        # an image built for another hub than the lab's (a user's own): its node config names
        # OTHER_HUB_URL; the seed cannot move it, the node must fail at once with why
        s = holding(1, nodedisk.prepare_site, "aws", wd("prep-other-hub"),
                    overrides=[f"enrollment.url={OTHER_HUB_URL}"])  # fmt: skip
        return cli_boot_plain("aws", wd("other-hub"), *s.boot_args(), "--no-reboot",
                              "--boot-timeout", "600")  # fmt: skip

    out = {
        "aws-cli": boot_pool.submit(aws_cli),
        "hub-late": boot_pool.submit(
            one, scenarios.run_hub_late, "onprem", "late", standin_gpu=True
        ),  # fmt: skip
        "onprem-uefi": boot_pool.submit(onprem_uefi),
        "expired": boot_pool.submit(one, scenarios.run_expired_token, "aws", "expired"),
        "no-token": boot_pool.submit(one, scenarios.run_no_seed_no_token, "aws", "no-token"),
        "other-hub": boot_pool.submit(other_hub),
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


# -- the ISO modules' long runs: session-wide, queued at the session's start as well --------
ISO_INSTALL_TOOLS = ("mmdebstrap", "dpkg-deb", "dpkg-scanpackages", "gpg", "unshare")
ISO_STATIC = (
    "network.static={address: 192.168.50.10/24, gateway: 192.168.50.1, dns: [192.168.50.1]}"
)


def iso_install_missing() -> list[str]:
    """What test_iso_install.py's host-side installs need (it skips without it)."""
    missing = [t for t in ISO_INSTALL_TOOLS if which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (mount namespace, chroot)")
    return missing


def iso_cli_missing() -> list[str]:
    """What test_iso_install_cli.py needs (it skips without it)."""
    return node_boot_missing() + [t for t in ("xorriso", "gzip") if which(t) is None]


def install_root(kind: str, wd: Path) -> Path:
    """The onprem site (GPU profile; ``static``: a static address) installed into a root on
    the host by the stand-in installer (tests/support/installer.py)."""
    from builder.site.profile import load_profile
    from builder.site.render import render_site
    from tests.support import installer, rootfs, standins

    extra = nodedisk.repo_overrides(gpu=True) + ([ISO_STATIC] if kind == "static" else [])
    profile = load_profile("onprem", None, extra)
    tree = render_site(profile, wd / "tree").path
    with nodedisk._PREP_LOCK:  # its cache entry: one builder at a time (as prepare_site)
        tarball = rootfs.build_rootfs(nodedisk.ROOTFS_EXTRA)
    root = rootfs.extract_rootfs(tarball, wd / "root")
    standins.build_standin_repo(root / nodedisk.REPO_IN_ROOT.lstrip("/"),
                                **nodedisk.standin_versions(profile))  # fmt: skip
    installer.install(root, tree, wd, tarball)
    return root


@pytest.fixture(scope="session")
def installed_roots(
    tmp_path_factory: pytest.TempPathFactory, boot_pool
) -> dict[str, concurrent.futures.Future]:
    """test_iso_install.py's installed roots (host work of about a core: one slot each)."""
    return {
        k: boot_pool.submit(holding, 1, install_root, k, tmp_path_factory.mktemp(f"installed-{k}"))
        for k in ("dhcp", "static")
    }


@pytest.fixture(scope="session")
def iso_cli_run(tmp_path_factory: pytest.TempPathFactory, boot_pool) -> concurrent.futures.Future:
    """`builder boot-test onprem --iso ISO --node-seed-only --static --nodes 2`
    (test_iso_install_cli.py checks it): the ISO installs in one guest, then the installed
    disk boots as two machines, each seeded with only what `builder seed` writes (host name,
    one-time token, a static address). Takes a guest for the install, two for the machines
    (``gated``). ``site``: the IsoSite, ``wall``: the command's wall time, ``iso_sha256``:
    the ISO's hash just before the command ran."""
    site_wd, wd = tmp_path_factory.mktemp("iso-site"), tmp_path_factory.mktemp("iso-cli")

    def go() -> dict[str, Any]:
        from builder.fsutil import sha256_file
        from tests.support.standin_iso import prepare_iso_site

        # reused from the cache, else built: host work of about a core
        site = holding(1, prepare_iso_site, "onprem", site_wd)
        before = sha256_file(site.iso)
        t0 = time.monotonic()
        out = cli_boot_test("onprem", wd, *site.boot_args(), "--node-seed-only", "--static",
                            "--nodes", "2", "--no-reboot",
                            "--boot-timeout", "2400", "--install-timeout", "3600",
                            timeout=5400)  # fmt: skip
        out.update(site=site, wall=time.monotonic() - t0, iso_sha256=before)
        return out

    return boot_pool.submit(go)


# the modules whose tests wait for the runs above: collected after the others (whose short
# boots then run in the test thread while the pool boots)
WAITING_MODULES = ("test_iso_install.py", "test_iso_install_cli.py", "test_node_boot.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent  # stable: the order is kept otherwise
    items.sort(key=lambda it: it.path.parent == here and it.path.name in WAITING_MODULES)


@pytest.fixture(scope="session", autouse=True)
def _boot_early(request: pytest.FixtureRequest) -> None:
    """Queue the long runs of the selected modules at the session's start, the longest
    chains first (the packer build and its two boots; the `--iso` install and its two
    machines; test_node_boot's scenarios; the host-side installs). An
    error shows in the tests that use the run (their fixtures raise it again)."""
    mods = {item.path.name for item in request.session.items}
    wanted: list[str] = []
    node = "test_node_boot.py" in mods and not node_boot_missing()
    if node:
        wanted += ["qcow2_build", "setup_futures"]
    if "test_iso_install_cli.py" in mods and not iso_cli_missing():
        wanted.append("iso_cli_run")
    if node:
        wanted.append("runs")
    if "test_iso_install.py" in mods and not iso_install_missing():
        wanted.append("installed_roots")
    for name in wanted:
        with contextlib.suppress(Exception):
            request.getfixturevalue(name)
