"""Build commands: image (iso, ami, qcow2) and seed."""

from __future__ import annotations

from pathlib import Path

import click

from .common import cli, echo_json, json_option, profiles_dir_option, set_option, site_argument


@cli.command("image")
@site_argument
@set_option
@profiles_dir_option
@click.option(
    "--target",
    type=click.Choice(["iso", "ami", "qcow2"]),
    default=None,
    help="Override the profile's target.",
)
@click.option(
    "--base-iso",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Use this local base ISO instead of downloading iso.base.url.",
)
@click.option(
    "--base-sha256",
    default=None,
    metavar="HEX",
    help="With --base-iso: its expected sha256 (offline; no SHA256SUMS download).",
)
@click.option(
    "--base-sha256sums",
    "base_sums",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="With --base-iso: a local SHA256SUMS listing it (default: SHA256SUMS beside the ISO).",
)
@click.option("--no-verify", is_flag=True, help="With --base-iso: do not check its sha256.")
@click.option("--force", is_flag=True, help="Rebuild even when the inputs are unchanged.")
@click.option(
    "--allow-demo",
    is_flag=True,
    help="Build even though the profile still has the example profiles' demo hub credentials.",
)
@click.option(
    "--dry-run", is_flag=True, help="ami/qcow2: render, then print the exact packer command."
)
@click.option(
    "--base-image",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="qcow2: a local base cloud image instead of the profile's URL.",
)
@click.option(
    "-o",
    "--dist",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: dist/SITE).",
)
@json_option
def image_cmd(
    site: str,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
    target: str | None,
    base_iso: Path | None,
    base_sha256: str | None,
    base_sums: Path | None,
    no_verify: bool,
    force: bool,
    allow_demo: bool,
    dry_run: bool,
    base_image: Path | None,
    dist: Path | None,
    as_json: bool,
) -> None:
    """Build SITE's image: the target its profile names (or --target).

    iso: the remastered Ubuntu installer ISO; ami/qcow2: a Packer build.
    Prints the artifact (ISO path, AMI id per region, qcow2 path) on stdout.
    """
    from builder.targets import image

    result = image.build(
        site,
        profiles_dir=profiles_dir,
        overrides=overrides,
        target=target,
        dist=dist,
        base_iso=base_iso,
        verify=not no_verify,
        force=force,
        dry_run=dry_run,
        base_image=base_image,
        base_sha256=base_sha256,
        base_sums=base_sums,
        allow_demo=allow_demo,
    )
    if as_json:
        echo_json(image.result_json(result))
    else:
        for line in image.result_lines(result):
            click.echo(line)
    image.dry_run_report(result)


@cli.command("seed")
@site_argument
@set_option
@profiles_dir_option
@click.option("--hostname", required=True, help="The node's host name (e.g. gpu-01).")
@click.option("--ip", default=None, metavar="CIDR", help="Static address, e.g. 192.168.50.10/24.")
@click.option("--gateway", default=None, help="Default gateway (with --ip).")
@click.option("--dns", multiple=True, help="DNS server (with --ip); repeatable.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding a one-time enrollment token for this node.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the seed ISO (0600).",
)
@json_option
def seed_cmd(
    site: str,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
    hostname: str,
    ip: str | None,
    gateway: str | None,
    dns: tuple[str, ...],
    token_file: Path | None,
    output: Path,
    as_json: bool,
) -> None:
    """Write a NoCloud CIDATA seed ISO with per-node data (second USB stick or VM disk)."""
    from builder.errors import UsageError
    from builder.hub.tokens import parse_token
    from builder.site.profile import load_profile
    from builder.targets.seed import node_seed, write_seed

    profile = load_profile(site, profiles_dir, overrides)
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text()
        except OSError as exc:
            raise UsageError(f"--token-file: {token_file}: {exc.strerror}") from None
        if parse_token(token) is None:
            raise UsageError(
                f"--token-file: {token_file}: not an enrollment token",
                hint="the file holds one token as `builder hub token create` prints it "
                "(nf1.<id>.<secret>)",
            )
    files = node_seed(
        site=profile.site,
        hostname=hostname,
        ip=ip,
        gateway=gateway,
        dns=list(dns),
        token=token,
        site_lan=profile.spec.network.site_lan,
    )
    path = write_seed(output, files)
    if as_json:
        echo_json(
            {
                "site": profile.site,
                "path": str(path),
                "hostname": hostname,
                "files": sorted(files),
                "token": token is not None,  # never the token itself
            }
        )
        return
    click.echo(path)
