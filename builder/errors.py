"""Exceptions raised by the library; only the CLI turns them into messages and exit codes.

The one exit-code table (every command; README "Exit codes"):

==== ==========================================================================
0    ok
1    an action failed (a tool or a build failed, a check found a problem on disk)
2    bad input or usage (options, arguments, profiles: ``file: key.path: message``)
3    refused for safety (flash: not a safe stick; image: the demo hub credentials); nothing written
130  interrupted (Ctrl-C); whatever was half-written is removed
==== ==========================================================================

A missing external program is an action failure (1) with its own message,
``needs packer: apt-get install --no-install-recommends packer``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130


class BuilderError(Exception):
    """A failure the user can act on: a message and an optional hint."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(BuilderError):
    """Bad input from the user (options, arguments): exit code 2."""

    exit_code = EXIT_USAGE


class ValidationError(UsageError):
    """One or more problems in a profile or a rendered file, every one listed.

    Each problem is already formatted as ``file: key.path: message``.
    """

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(self.problems), hint)


class ToolMissing(BuilderError):
    """An external program we need is not installed (exit 1, "needs TOOL: apt-get install …")."""


class Refused(BuilderError):
    """Refused for safety (e.g. flashing a disk that is not a removable stick): exit 3."""

    exit_code = EXIT_REFUSED


class Interrupted(BuilderError):
    """Ctrl-C during an action: exit 130 like any interrupted command."""

    exit_code = EXIT_INTERRUPTED


class CommandFailed(BuilderError):
    """An external program exited non-zero."""

    def __init__(self, message: str, returncode: int, output: str = "", hint: str | None = None):
        super().__init__(message, hint)
        self.returncode = returncode
        self.output = output
