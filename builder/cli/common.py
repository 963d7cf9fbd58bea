"""The ``builder`` Click group, its global options and the option decorators commands share."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem

from builder import __version__, progress


class State:
    debug = False
    verbose = 0
    quiet = 0

    @classmethod
    def apply(cls) -> None:
        setup_logging(cls.debug, cls.verbose, cls.quiet)
        progress.set_quiet(cls.quiet > 0)


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

    --debug, -v and -q may also follow the command (builder render onprem -q).

    \b
    Exit codes (every command):
      0    ok
      1    an action failed (a tool, a build, a check on disk)
      2    bad input or usage (options, arguments, profiles)
      3    refused for safety (flash: not a safe target; image: demo hub credentials)
      130  interrupted (Ctrl-C)
    """
    State.debug, State.verbose, State.quiet = debug, verbose, quiet
    State.apply()
    ctx.call_on_close(lambda: progress.set_quiet(False))  # -q lasts for this command only


# --debug, -v and -q also work after the subcommand (`builder render onprem -q`): every
# command gets hidden copies that add to what was given before it.
def _global_callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if not value:
        return
    if param.name == "g_debug":
        State.debug = True
    elif param.name == "g_verbose":
        State.verbose += int(value)
    elif param.name == "g_quiet":
        State.quiet += int(value)
    State.apply()


_GLOBALS = (
    ("g_debug", ("--debug",), {"is_flag": True}),
    ("g_verbose", ("-v", "--verbose"), {"count": True}),
    ("g_quiet", ("-q", "--quiet"), {"count": True}),
)


def install_global_options(group: click.Group) -> None:
    """Give every command under ``group`` the global options (unless it has its own)."""
    for cmd in group.commands.values():
        if isinstance(cmd, click.Group):
            install_global_options(cmd)
            continue
        taken = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for name, opts, kw in _GLOBALS:
            if taken.isdisjoint(opts):
                cmd.params.append(
                    click.Option(
                        [*opts, name],
                        expose_value=False,
                        hidden=True,
                        callback=_global_callback,
                        **kw,  # type: ignore[arg-type]
                    )
                )


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


class CheckName(click.ParamType):
    """A validator name (``builder.targets.CHECK_NAMES``), checked and completed; the
    validators are imported only when the option is used."""

    name = "check"

    @staticmethod
    def names() -> tuple[str, ...]:
        from builder.targets import CHECK_NAMES

        return CHECK_NAMES

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        names = self.names()
        if value not in names:
            from builder.site.common import did_you_mean

            hint = did_you_mean(str(value), names)
            self.fail(
                f"{value!r} is not a check ({', '.join(names)})" + (f"; {hint}" if hint else ""),
                param,
                ctx,
            )
        return value

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(n) for n in self.names() if n.startswith(incomplete)]


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)
