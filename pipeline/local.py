"""The local executor: a whole job in this process, without Ray, for small jobs that must start fast.

What Ray costs a small job is fixed: a private instance's start (about 4 s on two cores), a model
actor's start (a new process importing torch and loading the model, about 5 s) and a round trip or
two per batch. What it buys (several actors and machines, a model process that may die on one item
without taking the job with it) a job of a few hundred outputs on one model does not need.
``resources.executor: local`` (which ``auto`` picks for such jobs, :func:`choose_executor`) runs the
very same stage functions as the Ray path, in order: shard reader, decode, :class:`Editor`, write,
shard finishing. Outputs, index rows and shard records are the same, byte for byte (outputs never
depend on batches or processes). A helper thread decodes the next block and writes the last batch
while the model works, as Ray's CPU tasks would. A process that dies mid-run leaves what a killed
Ray driver leaves: a resume finishes the job.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from typing import Any

import pyarrow as pa

from pipeline.resume import WorkPlan
from pipeline.rows import RESULT_SCHEMA
from pipeline.shards import Shard, read_shard, read_shard_ids
from pipeline.source import ReadSettings, read_in_driver, small_manifests, with_done
from pipeline.spec import JobSpec

log = logging.getLogger("pipeline")

# auto picks the local executor for jobs of at most this many outputs: at a few seconds of Ray's
# fixed cost against the model's work, local wins below this on any model; above it a long job
# wants Ray's crash isolation (a poison item ends as an error row instead of stopping the run).
LOCAL_MAX_OUTPUTS = 1_000
AHEAD = 4  # decoded blocks and unwritten batches in flight at once: memory stays a few batches


class LocalCounter:
    """Outputs made so far, ok and failed: the progress line's ``ask``."""

    def __init__(self) -> None:
        self.ok = self.failed = 0

    def __call__(self) -> tuple[int, int]:
        return self.ok, self.failed


def choose_executor(spec: JobSpec, outputs: int, *, ray_connected: bool, address: str | None = None) -> str:
    """``resources.executor`` resolved: ``"ray"`` or ``"local"``.

    auto is local only when nothing asks for Ray: no Ray connected in this process (a caller that
    connected one, a notebook, a test session, means to use it), no cluster named (``address`` or
    ``RAY_ADDRESS``), one actor, and at most :data:`LOCAL_MAX_OUTPUTS` outputs to make."""
    chosen = spec.resources.executor
    if chosen != "auto":
        return chosen
    named = address or os.environ.get("RAY_ADDRESS")
    one_model = spec.resources.actors.max == 1
    return "local" if not ray_connected and not named and one_model and outputs <= LOCAL_MAX_OUTPUTS else "ray"


def run_local(spec: JobSpec, plan: Any, shards: list[Shard], work: WorkPlan, run_id: str,
              counter: LocalCounter) -> None:
    """Make every pending output of ``work`` in this process; each shard finished when its last batch is written."""
    from pipeline.editing import Editor
    from pipeline.finalize import remove_empty_work
    from pipeline.run import decode_settings, edit_settings, finish_settings, rows_per_block, write_settings

    read = ReadSettings(sampling=spec.sampling, layout=spec.layout, classes=plan.classes,
                        options=spec.options_for("input"))
    pending = _pending_tables(shards, work, read)  # the ids are checked before the model loads
    first = next(pending, None)
    if first is None:
        return
    run = _LocalRun(Editor(edit_settings(spec, plan)), decode_settings(spec, plan), write_settings(spec, plan, run_id),
                    finish_settings(spec, plan, run_id), plan.batch_size, counter)
    block = rows_per_block(spec, plan)
    try:
        for shard, table in chain([first], pending):
            run.shard(shard, table, block, work.previous.get(shard.name))
        run.drain()
        remove_empty_work(spec.output.uri, spec.options_for("output"))
    except BaseException:
        run.io.shutdown(wait=True, cancel_futures=True)  # an interrupted run stops at the task in hand
        raise
    run.io.shutdown(wait=True)


class _LocalRun:
    """The model in this thread; decode, write and shard finishing in one helper thread, in order."""

    def __init__(self, editor: Any, decoding: Any, writing: Any, finishing: Any, batch: int,
                 counter: LocalCounter) -> None:
        self.editor, self.decoding, self.writing, self.finishing = editor, decoding, writing, finishing
        self.batch, self.counter = batch, counter
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdedit-io")  # one worker: FIFO
        self.in_flight: deque[Future[Any]] = deque()  # writes and finishes not yet known to have worked

    def shard(self, shard: Shard, table: pa.Table, rows_per_block: int, previous: Any) -> None:
        """Decode (ahead), edit and write a shard's rows, then queue its finishing after its writes."""
        from pipeline.decode import decode_batch
        from pipeline.finalize import finish_shard
        from pipeline.redact import strip_userinfo

        blocks = deque(table.slice(lo, rows_per_block) for lo in range(0, table.num_rows, rows_per_block))
        decoded: deque[Future[pa.Table]] = deque()
        while blocks and len(decoded) < AHEAD:
            decoded.append(self.io.submit(decode_batch, blocks.popleft(), self.decoding))
        rows: list[dict[str, Any]] = []
        while decoded:
            rows += decoded.popleft().result().to_pylist()
            if blocks:
                decoded.append(self.io.submit(decode_batch, blocks.popleft(), self.decoding))
            while len(rows) >= self.batch or (rows and not decoded):
                self._edit(rows[: self.batch])
                del rows[: self.batch]
        item = {**shard.as_item(), "uri": strip_userinfo(shard.uri)}
        self._later(finish_shard, item, self.finishing, previous)

    def _edit(self, rows: list[dict[str, Any]]) -> None:
        from pipeline.write import write_batch

        results = self.editor.edit_rows(rows)
        ok = sum(r["status"] == "ok" for r in results)
        self.counter.ok, self.counter.failed = self.counter.ok + ok, self.counter.failed + len(results) - ok
        self._later(write_batch, pa.Table.from_pylist(results, schema=RESULT_SCHEMA), self.writing)

    def _later(self, fn: Any, *args: Any) -> None:
        self.in_flight.append(self.io.submit(fn, *args))
        while len(self.in_flight) > AHEAD:
            self.in_flight.popleft().result()  # raises what the write or finish raised

    def drain(self) -> None:
        while self.in_flight:
            self.in_flight.popleft().result()


def _pending_tables(shards: list[Shard], work: WorkPlan, settings: ReadSettings) -> Iterator[tuple[Shard, pa.Table]]:
    """The pending shards' rows, done outputs marked, one shard at a time; every id checked first."""
    from pipeline.manifest import check_ids

    options = settings.options or {}
    if small_manifests(shards, options):
        yield from read_in_driver(shards, work, settings)
        return
    check_ids(pa.chunked_array([read_shard_ids(s, options) for s in shards], pa.string()))
    for s in work.pending:
        yield s, with_done(read_shard(s, options, settings.classes), work.done.get(s.name), settings)
