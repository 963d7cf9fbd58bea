"""``builder boot-test``: boot a built disk image (or install an ISO, then boot what it
installed) as a site's nodes in QEMU with a real hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from builder.errors import BuilderError, UsageError

from .common import cli, echo_json, profiles_dir_option, set_option

log = logging.getLogger("builder")


@cli.command("boot-test")
@click.argument("site")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The disk image to boot (qcow2 or raw, e.g. dist/SITE/NAME.qcow2); never modified.",
)
@click.option(
    "--iso",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Or: the site's ISO (dist/SITE/NAME.iso; never modified): install it onto a blank "
    "virtual disk, then boot the installed disk.",
)
@click.option(
    "--seed",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --iso: a `builder seed` volume; the node keeps its host name, instance-id and "
    "network-config (token and hub settings come from the lab). Default: a seed per node.",
)
@click.option(
    "--install-timeout",
    type=click.IntRange(min=60),
    default=3600,
    show_default=True,
    help="With --iso: seconds the install may take.",
)
@click.option(
    "--online-install",
    is_flag=True,
    help="With --iso: the installer gets this machine's network (a real Ubuntu ISO whose "
    "autoinstall installs packages needs the archive); default: no network beyond QEMU's.",
)
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Nodes booted at the same time (one vCPU each).",
)
@click.option("--uefi", is_flag=True, help="Boot with UEFI firmware (OVMF), not BIOS.")
@click.option(
    "--kernel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Direct kernel boot (a disk without a boot loader): this kernel.",
)
@click.option(
    "--initrd",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --kernel: this initrd.",
)
@click.option("--append", default=None, help="With --kernel: the kernel command line.")
@click.option(
    "--expect-console",
    "expect_console",
    multiple=True,
    metavar="REGEX",
    help="Also wait for REGEX on each node's serial console before powering it off.",
)
@click.option(
    "--node-seed-only",
    is_flag=True,
    help="Seed only what `builder seed` writes (host name, token, --static's address), not "
    "the site's user-data: for a system installed from the site's ISO (with --iso: an ISO "
    "built for the lab's hub, as the tests build it; a user's ISO trusts only its own hub).",
)
@click.option(
    "--static",
    is_flag=True,
    help="Give each node a static address on QEMU's network through its seed (as "
    "`builder seed --ip` does), not DHCP.",
)
@click.option(
    "--boot-timeout",
    type=click.IntRange(min=30),
    default=900,
    show_default=True,
    help="Seconds each node's boot may take to join.",
)
@click.option("--keep", is_flag=True, help="Keep the work directory (consoles, hub DB, seeds).")
@click.option(
    "--reboot/--no-reboot",
    default=True,
    show_default=True,
    help="Boot the first node a second time (it must not enroll again).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@set_option
@profiles_dir_option
def boot_test(
    site: str,
    image: Path | None,
    iso: Path | None,
    seed: Path | None,
    install_timeout: int,
    online_install: bool,
    nodes: int,
    uefi: bool,
    kernel: Path | None,
    initrd: Path | None,
    append: str | None,
    expect_console: tuple[str, ...],
    node_seed_only: bool,
    static: bool,
    boot_timeout: int,
    keep: bool,
    reboot: bool,
    as_json: bool,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
) -> None:
    """Boot IMAGE as SITE's nodes in QEMU with a real hub; check they join on their own.

    With --iso, the ISO first installs itself onto a blank virtual disk (as on a bare-metal
    machine); the installed disk is then booted the same way."""
    from builder.boottest import boot_test as run_boot_test
    from builder.boottest import boot_test_iso

    if (image is None) == (iso is None):
        raise UsageError("boot-test: give exactly one of --image DISK or --iso ISO")
    if iso is None and (seed is not None or online_install):
        raise UsageError("--seed/--online-install: only with --iso")
    if iso is not None:
        result = boot_test_iso(
            site, iso, seed=seed, node_seed_only=node_seed_only, nodes=nodes, uefi=uefi,
            kernel=kernel, initrd=initrd,
            append=append, keep=keep, profiles_dir=profiles_dir, overrides=overrides,
            reboot=reboot, console=expect_console, install_timeout=install_timeout,
            online=online_install, static=static, timeout=boot_timeout,
        )  # fmt: skip
        _report(site, result, as_json)
        return
    assert image is not None
    result = run_boot_test(
        site,
        image,
        nodes=nodes,
        uefi=uefi,
        kernel=kernel,
        initrd=initrd,
        append=append,
        keep=keep,
        profiles_dir=profiles_dir,
        overrides=overrides,
        reboot=reboot,
        console=expect_console,
        node_seed_only=node_seed_only,
        static=static,
        timeout=boot_timeout,
    )
    _report(site, result, as_json)


def _report(site: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(result)
    else:
        for n in result["nodes"]:
            state = "joined" if n["joined"] else "NOT joined"
            click.echo(
                f"{n['node']}: {state} {n.get('address') or '-'} in {n.get('seconds_to_joined')} s"
            )
    problems = result["problems"]
    if problems:
        raise BuilderError(
            f"boot test of {site} failed ({len(problems)} problems):\n"
            + "\n".join(f"  - {p}" for p in problems),
            hint="re-run with --keep and read the consoles in the work directory",
        )
    log.info("%s: boot test passed (%d node(s))", site, len(result["nodes"]))
