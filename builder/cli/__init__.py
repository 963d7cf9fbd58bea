"""Command line: one thin function per command, one module per command group.

Commands parse options, call one library function and print its result.
Library code raises BuilderError; ``main`` turns it into ``error: …`` / ``hint: …``
on stderr and an exit code: the one table in builder.errors (0 ok, 1 failed, 2 bad
input/usage, 3 refused for safety, 130 interrupted), shown by ``builder --help``.

Modules: ``common`` (the group, global options, shared decorators), ``site`` (profiles,
show, render, validate), ``image`` (image, seed), ``hub`` (the hub group), ``flash``
(devices, flash), ``boottest`` (boot-test).
"""

from __future__ import annotations

import signal
import sys

import click

from builder.errors import EXIT_FAILED, EXIT_INTERRUPTED, BuilderError
from builder.run import exit_on_sigterm

from . import boottest, flash, hub, image, site  # noqa: F401  (each registers its commands)
from .common import State, cli, install_global_options
from .common import complete_site as _complete_site
from .hub import hub_store as _hub_store

__all__ = ["_complete_site", "_hub_store", "cli", "main"]

install_global_options(cli)  # --debug/-v/-q after the subcommand too


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Click group and map errors to messages and exit codes."""
    previous = exit_on_sigterm()  # a SIGTERM still stops children and removes temp files
    try:
        _run(argv)
    finally:  # called in-process (tests, another program): leave SIGTERM as it was
        signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> None:
    try:
        rc = cli.main(args=argv, prog_name="builder", standalone_mode=False)
        # without standalone mode, click returns ctx.exit(code)'s code instead of exiting
        if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
            sys.exit(rc)
    except click.exceptions.Abort as exc:  # Click turns Ctrl-C into Abort
        ctrl_c = isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt)
        click.echo("interrupted" if ctrl_c else "aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
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
        sys.exit(EXIT_FAILED)
