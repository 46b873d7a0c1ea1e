"""The model stage on Ray (pipeline.pool): batches cut from decoded blocks, the actor pool's
dispatch, growth, failure and shutdown, on the shared Ray session with a trivial editor."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
import ray

from pipeline.pool import ModelPool, Outstanding, batches


def _bundle(*blocks: tuple[str, int | None], slices: list[Any] | None = None) -> Any:
    entries = tuple(SimpleNamespace(ref=ref, metadata=SimpleNamespace(num_rows=n)) for ref, n in blocks)
    return SimpleNamespace(blocks=entries, slices=slices)


def test_batches_cut_every_block_by_offset() -> None:
    bundles = [_bundle(("a", 5), ("b", 2)), _bundle(("c", 4), slices=[SimpleNamespace(start_offset=1,
                                                                                      end_offset=4)])]
    assert list(batches(bundles, 2)) == [("a", 0, 2), ("a", 2, 4), ("a", 4, 5), ("b", 0, 2), ("c", 1, 3),
                                         ("c", 3, 4)]
    assert list(batches([_bundle(("e", 0))], 8)) == []  # an empty block: no batch


def _doubler() -> type:
    """A stand-in editor: ``__call__`` doubles column x and notes its process; slow or broken when told.
    Made in a function, so cloudpickle ships it by value (workers cannot import this module)."""

    class Doubler:
        def __init__(self, settings: dict[str, Any]) -> None:
            self.delay = settings.get("delay", 0.0)
            if settings.get("fail"):
                raise RuntimeError("CUDA error: no device available on this worker")

        def __call__(self, batch: pa.Table) -> pa.Table:
            time.sleep(self.delay)
            n = batch.num_rows
            return pa.table({"x": [2 * v for v in batch.column("x").to_pylist()], "pid": [os.getpid()] * n})

    return Doubler


def _run(pool: ModelPool, table: pa.Table, size: int) -> pa.Table:
    block = ray.put(table)
    refs = [pool.submit(block, lo, min(table.num_rows, lo + size)) for lo in range(0, table.num_rows, size)]
    return pa.concat_tables(ray.get(refs))


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow
def test_pool_edits_every_batch_grows_to_max_and_stops_its_actors() -> None:
    table = pa.table({"x": list(range(32))})
    pool = ModelPool(_doubler(), {"delay": 0.25}, min_size=1, max_size=2, num_cpus=0.25)
    try:
        out = _run(pool, table, 1)  # 8 s of work for one actor: time for a second one to start
        assert out.column("x").to_pylist() == [2 * v for v in range(32)]  # every row once, in order
        assert len(pool.slots) == 2  # all busy with work waiting: grew to max, no further
        assert len(set(out.column("pid").to_pylist())) == 2  # and the second actor took work
        handles = [s.handle for s in pool.slots]
    finally:
        pool.shutdown()
    assert pool.slots == []
    for handle in handles:  # killed (a kill takes effect a moment later: a call may still be answered)
        deadline = time.monotonic() + 30
        while True:
            try:
                ray.get(handle.ready.remote(), timeout=30)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "an actor outlived the pool's shutdown"
            time.sleep(0.2)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow
def test_pool_grows_only_where_the_cluster_has_room() -> None:
    asked: list[int] = []

    def room(actors: int) -> bool:  # e.g. a second CPU actor would leave decode and write no CPU
        asked.append(actors)
        return actors <= 1

    pool = ModelPool(_doubler(), {"delay": 0.1}, min_size=1, max_size=3, num_cpus=0.25, may_grow=room)
    try:
        out = _run(pool, pa.table({"x": list(range(30))}), 1)
        assert out.column("x").to_pylist() == [2 * v for v in range(30)]
        assert len(pool.slots) == 1 and asked and set(asked) == {2}
    finally:
        pool.shutdown()


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow
def test_model_that_fails_to_load_raises_its_reason() -> None:
    pool = ModelPool(_doubler(), {"fail": True}, min_size=1, max_size=1, num_cpus=0.25)
    try:
        with pytest.raises(Exception, match="no device available"):
            _run(pool, pa.table({"x": list(range(6))}), 2)
    finally:
        pool.shutdown()


@ray.remote(num_cpus=0)
def _fails() -> None:
    raise ValueError("disk full")


@pytest.mark.usefixtures("ray_session")
def test_outstanding_raises_a_tasks_error_and_bounds_what_is_in_flight() -> None:
    seen = []
    checks = Outstanding(limit=2, on_progress=lambda: seen.append(1))
    for _ in range(5):
        checks.add(ray.put(1))
    assert len(checks.refs) <= 2 and seen
    checks.drain()
    assert checks.refs == []
    checks.add(_fails.remote())
    with pytest.raises(ValueError, match="disk full"):
        checks.drain()
