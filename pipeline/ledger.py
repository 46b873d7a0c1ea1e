"""Crash ledger: counts unfinished attempts per batch and per item, so a poison item ends as an error row.

Ray restarts a model actor whose process died and retries its batch, without limit (Ray Data's
default for actor pools). An item that kills the process every time (a segfault in a custom op, an
out-of-memory kill on one odd input) would then be retried forever. The ledger lives in the job's
small bookkeeping actor (:class:`pipeline.tracker.JobBook`), which the model actors report to:
before a batch they record an attempt, after it they clear it.
An attempt that is never cleared is a process that died. A batch seen dying once is retried one item
at a time, and an item on which the process died ``max_crashes`` times is skipped as an error row.
Only unfinished attempts are kept: the ledger stays small however long the job.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import ray

log = logging.getLogger("pipeline")


class CrashLedger:
    """Ray actor: ``begin(key)`` returns how many earlier attempts at ``key`` never finished."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.made = [0, 0]  # outputs edited ok, outputs that came out as errors (the driver's progress line)

    def begin(self, key: str) -> int:
        earlier = self.open.get(key, 0)
        self.open[key] = earlier + 1
        return earlier

    def finish(self, key: str) -> None:
        self.open.pop(key, None)

    def report(self, ok: int, failed: int) -> None:
        self.made[0] += ok
        self.made[1] += failed

    def progress(self) -> tuple[int, int]:
        return self.made[0], self.made[1]


def work_key(keys: Iterable[tuple[Any, ...]]) -> str:
    """A short stable key for a batch (or an item) from its output keys."""
    text = "\x1f".join("\x1e".join(str(part) for part in key) for key in keys)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


class LedgerClient:
    """The model actor's side: every call is best effort, a lost ledger never stops the work."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def begin(self, key: str) -> int:
        if self.handle is None:
            return 0
        try:
            return int(ray.get(self.handle.begin.remote(key), timeout=30))
        except Exception as e:  # noqa: BLE001 - without the ledger, Ray's own retries still apply
            log.warning("crash ledger unavailable (%s): poison items will not be isolated", type(e).__name__)
            self.handle = None
            return 0

    def report(self, ok: int, failed: int) -> None:
        """Count a batch's outputs for the progress line (fire and forget; a retried batch counts twice)."""
        if self.handle is not None:
            try:
                self.handle.report.remote(ok, failed)
            except Exception:  # noqa: BLE001
                self.handle = None

    def finish(self, key: str) -> None:
        if self.handle is not None:
            try:
                self.handle.finish.remote(key)  # fire and forget: order per caller is kept by Ray
            except Exception:  # noqa: BLE001
                self.handle = None
