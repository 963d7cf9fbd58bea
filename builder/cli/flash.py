"""Flashing commands: devices, flash."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from .common import cli, echo_json

log = logging.getLogger("builder")


def sysview_options(f: Any) -> Any:
    """Hidden: read devices from another sysfs tree / mountinfo (fixtures in tests)."""
    f = click.option(
        "--sys-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("/sys"),
        envvar="BUILDER_SYS_ROOT",
        hidden=True,
    )(f)
    f = click.option(
        "--mountinfo",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("/proc/self/mountinfo"),
        envvar="BUILDER_MOUNTINFO",
        hidden=True,
    )(f)
    return click.option(
        "--swaps",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("/proc/swaps"),
        envvar="BUILDER_SWAPS",
        hidden=True,
    )(f)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field) on stdout.")
@click.option("--all", "show_all", is_flag=True, help="Also list fixed disks, with why not.")
@sysview_options
def devices(as_json: bool, show_all: bool, sys_root: Path, mountinfo: Path, swaps: Path) -> None:
    """List removable/USB disks and mark the ones that are safe to flash."""
    from builder.flash import blockdev

    view = blockdev.SysView(sys_root, mountinfo, swaps)
    disks = blockdev.list_devices(view, show_all=show_all)
    if as_json:
        echo_json([d.to_dict() for d in disks])
    elif not disks:
        click.echo("no removable or USB disks found (plug in a stick; --all lists every disk)")
    else:
        click.echo(blockdev.format_table(disks))


@cli.command()
@click.argument("paths", nargs=-1, metavar="[IMAGE] DEVICE", type=click.Path())
@click.option("--site", help="Flash the newest ISO in DIST/SITE/ instead of IMAGE.")
@click.option(
    "--dist",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Where built images live (with --site).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Override the soft refusals (not removable/USB, mounted, partition). "
    "Never the disk holding /.",
)
@click.option("--no-verify", is_flag=True, help="Skip the read-back sha256 comparison.")
@click.option(
    "--verify-only", is_flag=True, help="Only compare DEVICE's start with IMAGE; write nothing."
)
@sysview_options
def flash(
    paths: tuple[str, ...],
    site: str | None,
    dist: Path,
    yes: bool,
    force: bool,
    no_verify: bool,
    verify_only: bool,
    sys_root: Path,
    mountinfo: Path,
    swaps: Path,
) -> None:
    """Write IMAGE (or the latest --site ISO) to the USB stick DEVICE, then verify it.

    DEVICE may also be a regular file. See `builder devices` for candidates.
    """
    from builder.errors import UsageError
    from builder.flash import blockdev
    from builder.flash import flasher as flashing

    want = 1 if site else 2
    if len(paths) != want:
        usage = "builder flash --site SITE DEVICE" if site else "builder flash IMAGE DEVICE"
        raise UsageError(
            f"expected {want} argument{'s' if want > 1 else ''}, got {len(paths)}: {usage}",
            hint="make flash SITE=onprem DEVICE=/dev/sdX; list devices with `builder devices`",
        )
    image = flashing.resolve_image(None if site else Path(paths[0]), site, dist)
    device = paths[-1]
    if verify_only:
        flashing.verify_target(image, Path(device))
        click.echo(f"{device}: matches {image}")
        return

    def ask(text: str) -> bool:
        click.echo(text, err=True)
        return click.confirm("Continue?", default=False, err=True)

    result = flashing.flash(
        image,
        device,
        yes=yes,
        force=force,
        verify=not no_verify,
        confirm=ask if sys.stdin.isatty() else None,
        view=blockdev.SysView(sys_root, mountinfo, swaps),
    )
    rate = blockdev.human_size(int(result.bytes / max(result.seconds, 1e-6)))
    log.info("wrote %s in %.1f s (%s/s)", blockdev.human_size(result.bytes), result.seconds, rate)
    if result.verified:
        also = f" and {result.sums_file}" if result.sums_file else ""
        log.info("verified: sha256 %s matches the image%s", result.sha256, also)
    else:
        log.warning("not verified (--no-verify)")
    click.echo(str(result.target))
