"""The ``builder`` Click group, its global options and the option decorators commands share."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from builder import __version__, progress


class State:
    debug = False


def setup_logging(debug: bool, verbose: int, quiet: int) -> None:
    level = logging.INFO + 10 * (quiet - verbose)
    if debug:
        level = logging.DEBUG
    logging.basicConfig(
        level=max(logging.DEBUG, min(level, logging.CRITICAL)),
        format="%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="builder")
@click.option("--debug", is_flag=True, help="Log every command run and show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less output (repeatable).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: int) -> None:
    """Build bootable node images for hybrid Kubernetes clusters.

    \b
    Exit codes (every command):
      0    ok
      1    an action failed (a tool, a build, a check on disk)
      2    bad input or usage (options, arguments, profiles)
      3    refused for safety (flash: not a safe target; image: demo hub credentials)
      130  interrupted (Ctrl-C)
    """
    State.debug = debug
    setup_logging(debug, verbose, quiet)
    progress.set_quiet(quiet > 0)
    ctx.call_on_close(lambda: progress.set_quiet(False))  # -q lasts for this command only


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def set_option(f: Any) -> Any:
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a profile value (dotted key, YAML value); repeatable, applied last.",
    )(f)


def profiles_dir_option(f: Any) -> Any:
    return click.option(
        "--profiles",
        "profiles_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="BUILDER_PROFILES",
        help="Directory holding the site profiles. Default: $BUILDER_PROFILES, else ./profiles, "
        "else the example profiles shipped with the builder.",
    )(f)


def complete_site(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        from builder.site.profile import list_sites

        return [s for s, _, _ in list_sites() if s.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


def site_argument(f: Any) -> Any:
    return click.argument("site", shell_complete=complete_site)(f)
