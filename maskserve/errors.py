"""What the ``maskserve`` command reports as one line: errors that carry their exit code."""

from __future__ import annotations


class CommandError(Exception):
    """A failure the user can act on: ``maskserve`` prints ``error: <first line>`` (after
    ``details``, when there are any) and exits with ``exit_code``, never a traceback."""

    exit_code = 1

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


class UsageError(CommandError):
    """A bad argument, setting or input path: exit code 2, as argparse uses."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none), cut at
    ``limit`` characters: library errors can be pages long."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
