"""Shard tracker: tells the driver when a shard's every output is written, so it can be finished.

A small Ray actor. The shard-reading tasks say how many outputs each shard will have (``expect``),
the write tasks say which outputs they wrote (``wrote``, keyed by their part file, so a retried
task counts once); a shard whose written outputs reach its expected ones is handed to the driver
once (``take_ready``), which then publishes it (pipeline.finalize). Only unfinished shards are
kept. If the tracker is lost, nothing is: the driver finishes every shard of the run at its end.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

log = logging.getLogger("pipeline")


class ShardTracker:
    """Ray actor: expected and written outputs per shard of this run."""

    def __init__(self) -> None:
        self.expected: dict[str, int] = {}
        self.written: dict[str, dict[str, int]] = {}
        self.ready: list[str] = []
        self.handed: set[str] = set()

    def expect(self, shard: str, outputs: int) -> None:
        self.expected[shard] = outputs
        self._check(shard)

    def wrote(self, shard: str, part: str, outputs: int) -> None:
        if shard in self.handed:
            return
        self.written.setdefault(shard, {})[part] = outputs
        self._check(shard)

    def _check(self, shard: str) -> None:
        expected = self.expected.get(shard)
        if expected is None or shard in self.handed:
            return
        if sum(self.written.get(shard, {}).values()) >= expected:
            self.handed.add(shard)
            self.ready.append(shard)
            self.written.pop(shard, None)
            self.expected.pop(shard, None)

    def take_ready(self) -> list[str]:
        ready, self.ready = self.ready, []
        return ready


class JobBook(ShardTracker):
    """One small actor per job for all the bookkeeping: the shard tracker and the crash ledger
    (pipeline.ledger) in one process, so a small job starts one helper process, not two."""

    def __init__(self) -> None:
        from pipeline.ledger import CrashLedger

        super().__init__()
        self.ledger = CrashLedger()

    def begin(self, key: str) -> int:
        return self.ledger.begin(key)

    def finish(self, key: str) -> None:
        self.ledger.finish(key)

    def done(self, key: str | None, ok: int, failed: int) -> None:
        self.ledger.done(key, ok, failed)

    def progress(self) -> tuple[int, int]:
        return self.ledger.progress()


def start_book(name: str | None = None) -> Any:
    """The job's bookkeeping actor (no CPU reserved: it only counts); ``name``: findable by
    ``ray.get_actor`` (the model actors look it up by name, pipeline.pool)."""
    return ray.remote(JobBook).options(num_cpus=0, max_restarts=-1, name=name).remote()


def tell(handle: Any, method: str, *args: Any) -> None:
    """Fire and forget; a lost tracker only delays finishing shards to the run's end."""
    if handle is None:
        return
    try:
        getattr(handle, method).remote(*args)
    except Exception as e:  # noqa: BLE001
        log.debug("shard tracker unavailable: %s", e)
