"""``builder boot-test``: boot a site's node image in QEMU with a real hub."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from builder.errors import BuilderError

from .common import cli, echo_json, profiles_dir_option, set_option

log = logging.getLogger("builder")


@cli.command("boot-test")
@click.argument("site")
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Nodes booted at the same time (one vCPU each).",
)
@click.option("--uefi", is_flag=True, help="Boot a GPT disk with OVMF (not direct kernel boot).")
@click.option("--keep", is_flag=True, help="Keep the work directory (consoles, hub DB, seeds).")
@click.option(
    "--base-image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A real cloud image (e.g. Ubuntu's), not the Debian stand-in.",
)
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
    nodes: int,
    uefi: bool,
    keep: bool,
    base_image: Path | None,
    reboot: bool,
    as_json: bool,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
) -> None:
    """Boot SITE's node image in QEMU with a real hub and check it joins on its own."""
    from builder.boottest import boot_test as run_boot_test

    result = run_boot_test(
        site,
        nodes=nodes,
        uefi=uefi,
        keep=keep,
        base_image=base_image,
        profiles_dir=profiles_dir,
        overrides=overrides,
        reboot=reboot,
    )
    if as_json:
        echo_json(result)
    else:
        for n in result["nodes"]:
            click.echo(f"{n['name']}: {n['outcome']} {n['address']} in {n['seconds_to_joined']} s")
    problems = result["problems"]
    if problems:
        raise BuilderError(
            f"boot test of {site} failed ({len(problems)} problems):\n"
            + "\n".join(f"  - {p}" for p in problems),
            hint="re-run with --keep and read the consoles in the work directory",
        )
    log.info("%s: boot test passed (%d node(s))", site, len(result["nodes"]))
