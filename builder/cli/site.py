"""Profile commands: profiles, show, render, validate."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import (
    CheckName,
    cli,
    complete_site,
    echo_json,
    json_option,
    profiles_dir_option,
    set_option,
    site_argument,
)

log = logging.getLogger("builder")


@cli.command("profiles")
@profiles_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_cmd(profiles_dir: Path | None, as_json: bool) -> None:
    """List the site profiles."""
    from builder.site.profile import list_sites

    sites = list_sites(profiles_dir)
    if as_json:
        echo_json([{"site": s, "target": t, "description": d} for s, t, d in sites])
        return
    for site, target, desc in sites:
        click.echo(f"{site:<16} {target:<6} {desc}")


@cli.command("show")
@site_argument
@set_option
@profiles_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.option(
    "--origin",
    is_flag=True,
    help="Which layer (builder defaults, base, the site, --set) set each value.",
)
def show_cmd(
    site: str, overrides: tuple[str, ...], profiles_dir: Path | None, as_json: bool, origin: bool
) -> None:
    """Print the merged, validated profile for SITE (secrets masked)."""
    import json

    import yaml

    from builder.site.profile import load_profile

    profile = load_profile(site, profiles_dir, overrides)
    if origin:
        rows = profile.origins()
        if as_json:
            echo_json([{"key": k, "value": v, "origin": src} for k, v, src in rows])
            return
        width = max(len(k) for k, _, _ in rows)
        for key, value, src in rows:
            shown = json.dumps(value, sort_keys=True, default=str)
            click.echo(f"{key:<{width}}  {shown}  # {src}")
        return
    data = profile.masked()
    if as_json:
        echo_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=True, default_flow_style=False), nl=False)


@cli.command("render")
@site_argument
@set_option
@profiles_dir_option
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: build/SITE).",
)
@json_option
def render_cmd(
    site: str,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Render the build tree for SITE (cloud-init, autoinstall, Packer vars, scripts)."""
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    result = render_site(load_profile(site, profiles_dir, overrides), output)
    if as_json:
        echo_json(
            {
                "site": site,
                "path": str(result.path),
                "input_hash": result.input_hash,
                "files": dict(result.files),
                "secret_files": sorted(result.secret_files),
            }
        )
        return
    log.info("rendered %d files for %s (input %s)", len(result.files), site, result.input_hash[:12])
    click.echo(str(result.path))


@cli.command("validate")
@site_argument
@set_option
@profiles_dir_option
@click.option(
    "--skip",
    multiple=True,
    type=CheckName(),
    help="Leave out a validator (autoinstall-schema, cloud-init-schema, shellcheck, "
    "systemd-analyze, packer-validate); repeatable.",
)
@json_option
def validate_cmd(
    site: str,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
    skip: tuple[str, ...],
    as_json: bool,
) -> None:
    """Validate SITE: profile schema and checks, then the rendered tree with real validators.

    Nothing is written: the tree is rendered into a temporary directory.
    """
    from builder.site.profile import load_profile
    from builder.site.render import render_site
    from builder.targets import validate_site

    profile = load_profile(site, profiles_dir, overrides)
    ran = validate_site(lambda out: render_site(profile, out), tuple(skip))
    checks = ["profile-schema", *ran]
    if as_json:
        echo_json({"site": site, "valid": True, "checks": checks, "skipped": sorted(set(skip))})
        return
    log.info("%s: ok (%s)", site, ", ".join(checks))
    click.echo(f"{site}: valid")


@cli.command("init")
@click.argument("new")
@click.option(
    "--from", "from_site", required=True, shell_complete=complete_site, help="The site to copy."
)
@profiles_dir_option
def init_cmd(new: str, from_site: str, profiles_dir: Path | None) -> None:
    """Scaffold a commented site profile NEW from SITE's settings (profiles/NEW.yaml)."""
    from builder.site.scaffold import scaffold

    click.echo(scaffold(new, from_site, profiles_dir))
