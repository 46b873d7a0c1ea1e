"""The pipeline on a Ray cluster of several nodes (simulated on this machine by ``ray.cluster_utils``).

Checks that the model actors spread over the worker nodes and that outputs come from actors on
different nodes, that every item comes out exactly once, and that the job still completes when a
node holding an actor is removed in the middle of the run (the pool restarts the actor on the
spare node; Ray retries the lost batches and tasks). Which node produced which output is recorded by a
thin subclass of the real actor (test instrumentation only: it adds a record file per batch).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from sdedit_testing import SIZE  # the tiny model's sample size

import pipeline.run
from pipeline.actor import SDEditor
from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]
ACTOR_CPUS = 1.5  # more than half of a node's 2 CPUs: one actor per node


class RecordingSDEditor(SDEditor):
    """The real actor, plus one JSON file per batch naming the node that ran it and the outputs."""

    record_dir = ""  # set by the test before the class is pickled (by value) to the workers

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        result = super().__call__(batch)
        record = {"node": ray.get_runtime_context().get_node_id(), "at": time.time(),
                  "outputs": [[i, s] for i, s in zip(result.column("id").to_pylist(),
                                                      result.column("sample").to_pylist(), strict=True)]}
        (Path(self.record_dir) / f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))
        return result


@pytest.fixture
def recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import ray.cloudpickle

    folder = tmp_path / "records"
    folder.mkdir()
    monkeypatch.setattr(RecordingSDEditor, "record_dir", str(folder))
    monkeypatch.setattr(pipeline.run, "SDEditor", RecordingSDEditor)
    # Workers cannot import this test module: ship the subclass by value (its base by reference).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield folder
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in folder.glob("*.json")]


def _manifest(folder: Path, items: int) -> Path:
    img = folder / "img"
    img.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        coarse = np.random.default_rng(k).choice(np.array([0, 90, 180, 250], np.uint8), size=(4, 4))
        Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.NEAREST).save(img / f"g{k}.png")
    path = folder / "manifest.csv"
    path.write_text("id,guide\n" + "".join(f"item-{i:03d},img/g{i % 3}.png\n" for i in range(items)))
    return path


def _job(model: Path, manifest: Path, out: Path, steps: int) -> dict[str, Any]:
    return {
        "input": {"manifest": str(manifest)},
        "output": {"uri": str(out), "sheet_items": 0, "rows_per_index_file": 4},
        "model": {"uri": str(model)},
        "sampling": {"t0": 0.2, "steps": steps, "samples": 1, "seed": 5},
        "resources": {"actors": 2, "batch_size": 2, "num_cpus": ACTOR_CPUS},
    }


def _check_complete(out: Path, items: int) -> pd.DataFrame:
    """Every item exactly once, ok, with its image file; nothing else in images/."""
    index = pd.read_parquet(out / "index")
    assert sorted(index.id) == [f"item-{i:03d}" for i in range(items)]
    assert (index.status == "ok").all(), index[index.status != "ok"][["id", "error"]]
    names = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*") if not p.name.startswith(".")
                   and p.is_file() and p.name != "metadata.parquet")
    assert names == sorted(index.image)
    return index


def test_spread_over_nodes_and_survive_a_node_loss(ray_cluster: Any, tmp_path: Path, tiny_model: Path,
                                                   recording: Path) -> None:
    """Two actors on two nodes; a worker node holding one is removed mid-run; every item once, all ok."""
    import ray

    items = 16
    out = tmp_path / "out"
    spec = build_spec(_job(tiny_model, _manifest(tmp_path, items), out, steps=10))
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = run_job(spec)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test thread
            result["error"] = e

    runner = threading.Thread(target=target, daemon=True)
    start, wall_start = time.perf_counter(), time.time()
    runner.start()
    deadline = time.time() + 120  # until both actors have finished a batch
    while time.time() < deadline and runner.is_alive() and len({r["node"] for r in _records(recording)}) < 2:
        time.sleep(0.05)
    before = _records(recording)
    assert runner.is_alive(), "the run ended before a node could be removed"
    nodes_before = {r["node"] for r in before}
    assert len(nodes_before) == 2, "the two actors did not run on two nodes"

    head = ray.get_runtime_context().get_node_id()  # the driver's node cannot be removed
    victim_id = next(r["node"] for r in before if r["node"] != head)
    victim = next(n for n in ray_cluster.worker_nodes if n.node_id == victim_id)
    removed_at = time.perf_counter() - start
    ray_cluster.remove_node(victim, allow_graceful=False)  # kills its raylet, actor and tasks at once
    runner.join(timeout=240)
    assert not runner.is_alive(), "the run did not finish after the node was removed"
    if "error" in result:
        raise result["error"]
    summary = result["summary"]
    assert summary.exit_code == 0 and summary.outputs == summary.outputs_ok == items
    _check_complete(out, items)

    records = _records(recording)
    produced = [tuple(o) for r in records for o in r["outputs"]]
    assert set(produced) == {(f"item-{i:03d}", 0) for i in range(items)}  # the index holds each once
    done_before = sum(len(r["outputs"]) for r in before)
    assert done_before < items, "everything was done before the node was removed"
    assert {r["node"] for r in records if r not in before} - {victim_id}, "no other node took over"
    timeline = "\n".join(f"  {r['at'] - wall_start:6.1f} s  node {r['node'][:8]}  {len(r['outputs'])} output(s)"
                         for r in sorted(records, key=lambda r: r["at"]))
    print(f"\nmulti-node: {items} items; {done_before} outputs before node {victim_id[:8]} was removed at "
          f"{removed_at:.1f} s; {len(produced)} model outputs in all ({len(produced) - items} made again after "
          f"the loss); nodes with outputs: {len({r['node'] for r in records})}; finished at "
          f"{time.perf_counter() - start:.1f} s\n{timeline}")
