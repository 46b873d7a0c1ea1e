"""The progress line: what it says, and how often it says it off a terminal."""

from __future__ import annotations

import io
import time

from pipeline.progress import Progress


def test_the_line_says_done_of_about_total_failures_rate_and_time_left() -> None:
    line = Progress(lambda: (0, 0), 400).line(ok=90, failed=10, elapsed=10.0)
    assert line == "sdedit: 100 of about 400 outputs (10 failed), 10.00/s, about 30 s left"
    assert Progress(lambda: (0, 0), None).line(5, 0, 1.0) == "sdedit: 5 outputs (0 failed), 5.00/s"


def test_off_a_terminal_a_line_every_period_and_nothing_for_short_jobs() -> None:
    counts = iter([(k, 0) for k in range(1000)])
    log = io.StringIO()
    with Progress(lambda: next(counts), 100, stream=log, every_s=0.2, poll_s=0.02):
        time.sleep(0.9)
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 5 and all(line.startswith("sdedit: ") and "\r" not in line for line in lines)
    quiet = io.StringIO()
    with Progress(lambda: (1, 0), 100, stream=quiet, every_s=30, poll_s=0.02):
        time.sleep(0.2)
    assert quiet.getvalue() == ""


def test_a_failing_ask_stops_the_line_not_the_job() -> None:
    def broken() -> tuple[int, int]:
        raise RuntimeError("ledger gone")

    with Progress(broken, 10, stream=io.StringIO(), poll_s=0.01):
        time.sleep(0.05)
