"""Crash ledger: counts unfinished attempts per batch and per item, so a poison item ends as an error row.

Ray restarts a model actor whose process died and retries its batches, without limit (the model
pool, pipeline.pool, creates them with ``max_restarts=-1`` and ``max_task_retries=-1``). An item
that kills the process every time (a segfault in a custom op, an out-of-memory kill on one odd
input) would then be retried forever. The ledger lives in the job's
small bookkeeping actor (:class:`pipeline.tracker.JobBook`), which the model actors report to.

The protocol costs a healthy actor no waiting: before a batch it sends ``begin`` and after it
``done`` (outputs counted for the progress line), both fire and forget. Only a process that Ray
restarted after a death (``was_current_actor_reconstructed``) is careful: the first few batches it
is handed (the retries of those in flight when its predecessor died) go one item at a time, and every
later batch waits for ``begin``'s answer (how many earlier attempts never finished) and goes one item
at a time if there were any. One item at a time, every item's ``begin`` is waited for, and an item on
which the process died ``max_crashes`` times is skipped as an error row. An attempt never finished
is a process that died; only unfinished attempts are kept, so the ledger stays small however long the job.
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

    def done(self, key: str | None, ok: int, failed: int) -> None:
        """A batch ended: its attempt is finished (``key``, if it had one) and its outputs counted."""
        if key is not None:
            self.open.pop(key, None)
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
        """Record an attempt at ``key`` and wait for how many earlier ones never finished."""
        if self.handle is None:
            return 0
        try:
            return int(ray.get(self.handle.begin.remote(key), timeout=30))
        except Exception as e:  # noqa: BLE001 - without the ledger, Ray's own retries still apply
            log.warning("crash ledger unavailable (%s): poison items will not be isolated", type(e).__name__)
            self.handle = None
            return 0

    def begin_later(self, key: str) -> None:
        """Record an attempt at ``key`` without waiting (a healthy process's batch)."""
        self._send("begin", key)

    def finish(self, key: str) -> None:
        self._send("finish", key)

    def done(self, key: str | None, ok: int, failed: int) -> None:
        """A batch ended: finish its attempt and count its outputs for the progress line (a retried
        batch counts twice)."""
        self._send("done", key, ok, failed)

    def _send(self, method: str, *args: Any) -> None:
        if self.handle is not None:
            try:
                getattr(self.handle, method).remote(*args)  # fire and forget: Ray keeps one caller's order
            except Exception:  # noqa: BLE001
                self.handle = None
