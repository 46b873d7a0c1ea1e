"""The model stage on Ray: a pool of model actors that this driver owns and feeds, batch by batch.

Ray Data reads and decodes the manifest rows (CPU tasks); the driver takes the decoded blocks as
references (``iter_internal_ref_bundles``: no image passes through the driver), cuts each into
batches of ``batch_size`` rows by offset, hands every batch to a model actor with a free slot (at
most :data:`IN_FLIGHT` per actor, so the next batch's data is already there when one ends) and
submits the write task of its result at once (Ray starts it when the result exists). Why not Ray
Data's own actor pool (``map_batches(SDEditor, compute=ActorPoolStrategy)``), which this replaced:
it passes every actor a reference to an object it ``ray.put`` (the pickled operator) as a
constructor argument and creates the actors with ``max_restarts=-1``, which Ray's core worker
reports at error level on every run (ray-project/ray#53727: a restart fails if that object is
lost). Here an actor is built from plain values (its settings, a few kB, inlined in the creation
task), so a restart rebuilds it from its creation task alone; and the actors start before the
manifest is read, so the model loads while the driver reads and the first decode tasks run.

Fault tolerance is Ray's, as before: actors are created with ``max_restarts=-1`` and their batches
with ``max_task_retries=-1``, so a model process that dies is restarted and its batches in flight
retried; the crash ledger (pipeline.ledger) turns an item that kills its process every time into an
error row. Autoscaling: ``resources.actors.min`` actors start at once and take work before they are
ready (Ray queues it); while every ready actor is full and a batch waits, more are started, up to
``max``, never more starting than ready (1, 2, 4, ...) and only where the caller says there is room
(an extra CPU actor must leave the cluster a CPU share for decode and write tasks, or they would
never run again). An extra actor takes work once it is ready: one that Ray cannot place yet stays
pending (an autoscaling cluster adds a node for it) and never holds work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import ray

log = logging.getLogger("pipeline")

GROW_CHECK_S = 5.0  # how often a full autoscaling pool asks whether it may grow
IN_FLIGHT = 2  # batches per actor: one running, one whose data is fetched meanwhile (Ray Data's default)


@dataclass
class _Slot:
    handle: Any
    committed: bool  # one of the first ``min`` actors: takes work before it is ready
    ready: bool = False
    busy: int = 0


class ModelPool:
    """``min``..``max`` actors of ``editor_cls`` (a callable class: ``__init__(settings)`` loads the
    model, ``__call__(batch)`` edits an Arrow batch), each reserving ``num_cpus`` / ``num_gpus``.
    ``ledger``: the name of the crash-ledger actor, put into ``settings.ledger`` in each actor.
    ``may_grow(n)``: whether the cluster has room for ``n`` actors (asked at most every
    :data:`GROW_CHECK_S` seconds while the pool is full; None: always)."""

    def __init__(self, editor_cls: type, settings: Any, *, min_size: int, max_size: int, num_cpus: float,
                 num_gpus: float = 0, ledger: str | None = None, may_grow: Callable[[int], bool] | None = None,
                 in_flight: int = IN_FLIGHT) -> None:
        self.settings, self.max_size, self.in_flight, self.ledger = settings, max_size, in_flight, ledger
        self.may_grow, self.next_check = may_grow, 0.0
        self.remote = ray.remote(ModelActor).options(
            num_cpus=num_cpus, num_gpus=num_gpus or 0, max_restarts=-1, max_task_retries=-1,
            scheduling_strategy="SPREAD",  # one model per node first, as Ray Data spreads its actors
        )
        self.editor_cls = editor_cls
        self.slots: list[_Slot] = []
        self.running: dict[Any, _Slot] = {}  # batch result ref -> the actor editing it
        self.starting: dict[Any, _Slot] = {}  # readiness ref -> an actor not yet ready
        for _ in range(min_size):
            self._start(committed=True)

    def _start(self, committed: bool) -> None:
        slot = _Slot(self.remote.remote(self.editor_cls, self.settings, self.ledger), committed)
        self.slots.append(slot)
        self.starting[slot.handle.ready.remote()] = slot

    def submit(self, block: Any, lo: int, hi: int) -> Any:
        """Rows ``lo:hi`` of ``block`` (a ref to an Arrow table) to a free actor: the result's ref.
        Waits while every actor that may take work is full."""
        while True:
            self._collect(timeout=0)
            free = [s for s in self.slots if (s.ready or s.committed) and s.busy < self.in_flight]
            if free:
                slot = min(free, key=lambda s: s.busy)
                break
            self._grow()
            self._collect(timeout=None)
        ref = slot.handle.edit.remote(block, lo, hi)
        slot.busy += 1
        self.running[ref] = slot
        return ref

    def _grow(self) -> None:
        """Every actor that may take work is full and a batch waits: start more actors, up to ``max``,
        never more starting than are ready (1, 2, 4, ...), where ``may_grow`` agrees; asked at most
        every :data:`GROW_CHECK_S` seconds."""
        ready = sum(s.ready for s in self.slots)

        def wanted() -> bool:
            return len(self.slots) < self.max_size and len(self.slots) - ready < max(1, ready)

        if not wanted() or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + GROW_CHECK_S
        while wanted() and (self.may_grow is None or self.may_grow(len(self.slots) + 1)):
            self._start(committed=False)

    def _collect(self, timeout: float | None) -> None:
        """Note the batches that ended and the actors that became ready (waits up to ``timeout``
        for one of them; None: until one). A batch that failed is noticed by its write task."""
        waiting = [*self.running, *self.starting]
        if not waiting:
            return
        done, _ = ray.wait(waiting, num_returns=1 if timeout is None else len(waiting), timeout=timeout,
                           fetch_local=False)
        for ref in done:
            if ref in self.running:
                self.running.pop(ref).busy -= 1
            else:
                slot = self.starting.pop(ref)
                try:
                    ray.get(ref)
                except Exception:
                    if slot.committed:
                        raise  # the model fails to load in an actor: the job stops with the loader's reason
                    self.slots.remove(slot)  # an extra actor that never started: it never had work
                    ray.kill(slot.handle)
                    continue
                slot.ready = True

    def shutdown(self) -> None:
        """Stop every actor (the run's batches are done, or the run failed)."""
        for slot in self.slots:
            with contextlib.suppress(Exception):  # already gone
                ray.kill(slot.handle, no_restart=True)
        self.slots.clear()
        self.running.clear()
        self.starting.clear()


class ModelActor:
    """The Ray actor around one editor: built from plain values, so a restart needs nothing else.

    The editor's crash ledger is looked up by name (``ledger``) rather than passed as a handle: an
    actor handle among the constructor arguments counts as an object-store argument for Ray's check
    too (its owner may go away), so it would bring back the line this pool exists to avoid."""

    def __init__(self, editor_cls: type, settings: Any, ledger: str | None) -> None:
        if ledger is not None:
            settings = replace(settings, ledger=_find(ledger))
        self.editor = editor_cls(settings)

    def ready(self) -> bool:
        return True

    def edit(self, block: Any, lo: int, hi: int) -> Any:
        return self.editor(block.slice(lo, hi - lo))


def _find(name: str) -> Any:
    try:
        return ray.get_actor(name)
    except ValueError:  # gone (the driver ended): work without a ledger, as when it is lost later
        log.warning("crash ledger %s not found: poison items will not be isolated", name)
        return None


def batches(bundles: Iterable[Any], batch_size: int) -> Iterator[tuple[Any, int, int]]:
    """(block ref, lo, hi) for every batch of at most ``batch_size`` rows of the decoded blocks;
    ``bundles``: Ray Data RefBundles (a slice of a block when the bundle says so)."""
    for bundle in bundles:
        slices = bundle.slices or [None] * len(bundle.blocks)
        for entry, piece in zip(bundle.blocks, slices, strict=True):
            if piece is not None:
                lo, end = piece.start_offset, piece.end_offset
            else:
                lo, end = 0, entry.metadata.num_rows
                if end is None:  # not known (never so for map_batches outputs): ask the block
                    end = ray.get(_count_rows.remote(entry.ref))
            for start in range(lo, end, batch_size):
                yield entry.ref, start, min(end, start + batch_size)


@ray.remote(num_cpus=0)
def _count_rows(block: Any) -> int:
    return block.num_rows


class Outstanding:
    """Refs of tasks whose results are only checked (write tasks): at most ``limit`` unfinished at
    once; a failure raises here, in the driver, with the task's own error."""

    def __init__(self, limit: int, on_progress: Callable[[], None] | None = None) -> None:
        self.limit, self.on_progress = limit, on_progress
        self.refs: list[Any] = []

    def add(self, ref: Any) -> None:
        self.refs.append(ref)
        self._reap(wait=len(self.refs) > self.limit)
        while len(self.refs) > self.limit:
            self._reap(wait=True)

    def drain(self) -> None:
        while self.refs:
            self._reap(wait=True)

    def _reap(self, wait: bool) -> None:
        """Drop the finished refs (``wait``: for at least one), raising a failed task's error."""
        done, self.refs = ray.wait(self.refs, num_returns=1 if wait else len(self.refs),
                                   timeout=None if wait else 0, fetch_local=False)
        if done:
            ray.get(done)  # raises the task's error (or the error of the batch it was to write)
        if self.on_progress is not None:
            self.on_progress()
