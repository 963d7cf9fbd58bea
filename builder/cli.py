"""Command line: one thin function per command.

Commands parse options, call one library function and print its result.
Library code raises BuilderError; ``main`` turns it into ``error: …`` / ``hint: …``
on stderr and an exit code (1, 2 for usage/validation, 130 for Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import BuilderError

log = logging.getLogger("builder")


class State:
    debug = False


def _setup_logging(debug: bool, verbose: int, quiet: int) -> None:
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
def cli(debug: bool, verbose: int, quiet: int) -> None:
    """Build bootable node images for hybrid Kubernetes clusters."""
    State.debug = debug
    _setup_logging(debug, verbose, quiet)


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
        help="Directory holding the site profiles (default: ./profiles).",
    )(f)


# --- foundation commands (issue 2) -------------------------------------------------------

# --- iso / seed commands (issue 3) -------------------------------------------------------

# --- hub commands (issue 4) --------------------------------------------------------------

# --- packer targets (issue 5) ------------------------------------------------------------

# --- boot tests (issue 6) ----------------------------------------------------------------

# --- flashing (issue 7) ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Click group and map errors to messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="builder", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BuilderError as exc:
        if State.debug:
            raise
        for line in exc.message.splitlines() or [""]:
            click.echo(f"error: {line}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: short message unless --debug
        if State.debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: re-run with --debug for a traceback and report it", err=True)
        sys.exit(1)
