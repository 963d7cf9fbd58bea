"""Exceptions raised by the library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class BuilderError(Exception):
    """A failure the user can act on: a message and an optional hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(BuilderError):
    """Bad input from the user (options, arguments): exit code 2."""

    exit_code = 2


class ValidationError(UsageError):
    """One or more problems in a profile or a rendered file, every one listed.

    Each problem is already formatted as ``file: key.path: message``.
    """

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(self.problems), hint)


class ToolMissing(BuilderError):
    """An external program we need is not installed."""


class CommandFailed(BuilderError):
    """An external program exited non-zero."""

    def __init__(self, message: str, returncode: int, output: str = "", hint: str | None = None):
        super().__init__(message, hint)
        self.returncode = returncode
        self.output = output
