"""The progress line: counts, bar, rate and ETA from an injected clock; quiet off a terminal."""

from __future__ import annotations

import io

from maskserve.service.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rate_eta_and_failures_on_a_terminal() -> None:
    clock, out = Clock(), Terminal()
    progress = Progress(10, stream=out, clock=clock)
    clock.now += 2.0
    progress.advance()
    progress.advance(ok=False)
    assert out.getvalue().endswith("\r 2/10 [#####...................]  20% 1.00 img/s ETA 0:08, 1 failed")
    for _ in range(8):
        clock.now += 1.0
        progress.advance()
    assert out.getvalue().endswith("\r10/10 [########################] 100% 1.00 img/s in 0:10, 1 failed\n")


def test_off_a_terminal_it_prints_at_most_every_second_and_at_the_end() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(100, stream=out, clock=clock)
    for _ in range(100):
        clock.now += 0.05
        progress.advance()
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 7  # 5 s of work: one line a second, plus the last
    assert lines[-1].startswith("100/100") and "20.00 img/s in 0:05" in lines[-1]
    assert "\r" not in out.getvalue()


def test_durations() -> None:
    assert [duration(s) for s in (0, 7.4, 65, 3723)] == ["0:00", "0:07", "1:05", "1:02:03"]
