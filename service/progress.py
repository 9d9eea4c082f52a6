"""A one-line progress bar on stderr: done/total, a bar, the rate and the ETA, failures.

On a terminal it redraws in place; elsewhere (a CI log, a pipe) it prints a line at most every
``every_s`` seconds and at the end, so that logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 24


def duration(seconds: float) -> str:
    """``0:07``, ``12:05``, ``1:02:03``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(
        self,
        total: int,
        unit: str = "img",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 1.0,
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.every_s = every_s
        self.started = clock()
        self.done = 0
        self.failed = 0
        self._printed = -float("inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self) -> str:
        elapsed = self.clock() - self.started
        fraction = self.done / self.total if self.total else 1.0
        filled = round(WIDTH * fraction)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.done == self.total:
            eta = f"in {duration(elapsed)}"
        elif rate > 0:
            eta = f"ETA {duration((self.total - self.done) / rate)}"
        else:
            eta = "ETA ?"
        failed = f", {self.failed} failed" if self.failed else ""
        width = len(str(self.total))
        return (
            f"{self.done:>{width}}/{self.total} [{'#' * filled}{'.' * (WIDTH - filled)}] {fraction:4.0%} "
            f"{rate:.2f} {self.unit}/s {eta}{failed}"
        )

    def advance(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = self.clock()
        last = self.done == self.total
        if self._tty:
            self.stream.write("\r" + self.line() + ("\n" if last else ""))
        elif last or now - self._printed >= self.every_s:
            self.stream.write(self.line() + "\n")
            self._printed = now
        self.stream.flush()
