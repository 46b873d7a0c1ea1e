"""The progress line: outputs done (of about how many), failures, rate and time left, while a job runs.

The model actors count every batch's outputs in the crash ledger (pipeline.ledger); a thread in the
driver asks it once a second (``ask``). On a terminal the line is redrawn in place; otherwise (a cron log, CI)
a line is printed every ``every_s`` seconds, so a log stays short however long the job. The total is
the manifest's rows times the outputs per item, less those resumed: per-row samples or t0
overrides make it approximate, hence "about".
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO


class Progress:
    """``with Progress(ask, total):`` reports while the block runs; ``ask()`` returns (ok, failed) so far."""

    def __init__(self, ask: Callable[[], tuple[int, int]], total: int | None, *, stream: TextIO | None = None,
                 every_s: float = 30.0, poll_s: float = 1.0) -> None:
        self.ask, self.total = ask, total
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s, self.poll_s = every_s, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdedit-progress", daemon=True)
        self._start = time.perf_counter()
        self._last_line = self._start  # the first plain line after every_s: short jobs print none

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
            if self.live:
                self.stream.write("\n")
                self.stream.flush()

    def line(self, ok: int, failed: int, elapsed: float) -> str:
        done = ok + failed
        rate = done / elapsed if elapsed > 0 else 0.0
        of = f" of about {self.total}" if self.total else ""
        left = ""
        if self.total and rate > 0 and done < self.total:
            left = f", about {(self.total - done) / rate:.0f} s left"
        return f"sdedit: {done}{of} outputs ({failed} failed), {rate:.2f}/s{left}"

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                ok, failed = self.ask()
            except Exception:  # noqa: BLE001 - the line is a convenience; the job goes on without it
                return
            now = time.perf_counter()
            text = self.line(ok, failed, now - self._start)
            if self.live:
                self.stream.write("\r" + text.ljust(79))
                self.stream.flush()
            elif now - self._last_line >= self.every_s:
                self.stream.write(text + "\n")
                self.stream.flush()
                self._last_line = now
