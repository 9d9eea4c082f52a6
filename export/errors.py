"""Export failures, each with the exit code the ``maskserve`` command returns."""

from __future__ import annotations

from maskserve.errors import CommandError, UsageError


class ExportError(UsageError):
    """A bad input to ``maskserve export``: one line for the user, exit code 2."""


VERIFICATION_FAILED = "verification failed: the exported graph disagrees with PyTorch; no bundle was written"


class VerificationFailed(CommandError):
    """The exported graph disagrees with PyTorch; no bundle is written. Exit code 1, after the
    table of every check (``details``)."""

    def __init__(self, report: str, message: str = VERIFICATION_FAILED) -> None:
        super().__init__(message, details=report)
        self.report = report


class AccuracyGateFailed(CommandError):
    """A reduced-precision graph lost more than the allowed mIoU or PQ points against float32 on
    labelled data; no bundle is written. Exit code 1, after the accuracy report (``details``)."""
