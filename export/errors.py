"""Export failures, each with the exit code the CLI returns."""

from __future__ import annotations


class ExportError(Exception):
    """A bad input to ``maskserve export``: one line for the user, exit code 2."""

    exit_code = 2


class VerificationFailed(Exception):
    """The exported graph disagrees with PyTorch; no bundle is written. Exit code 1."""

    exit_code = 1

    def __init__(self, report: str) -> None:
        super().__init__(report)
        self.report = report
