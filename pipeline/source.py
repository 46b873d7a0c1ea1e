"""The manifest rows a run works on: its unfinished shards' rows, as a Ray Dataset.

Small manifests (up to :data:`SMALL_MANIFEST_ROWS` rows and :data:`SMALL_MANIFESTS_BYTES` in all)
are read in the driver: no Ray execution before the work starts (seconds saved on every small job), the ids checked
in place. Larger ones are read by Ray tasks, one per shard, and the ids are checked by a distributed
group-by (pipeline.idcheck); the driver then holds the list of shards and nothing per row.
Each pending shard's reader also tells the shard tracker how many outputs the shard will have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from pipeline.decode import planned_outputs
from pipeline.idcheck import check_unique_ids
from pipeline.manifest import check_ids
from pipeline.naming import OutputLayout
from pipeline.resume import WorkPlan
from pipeline.rows import MANIFEST_SCHEMA
from pipeline.shards import Shard, read_shard
from pipeline.spec import SamplingSpec
from pipeline.storage import url_to_fs
from pipeline.tracker import tell

# Manifests this small in all (rows and bytes) are read by the driver itself: a Parquet file of a
# million rows is a few MB, so bytes alone would not say what reading it in the driver costs.
SMALL_MANIFEST_ROWS = 20_000
SMALL_MANIFESTS_BYTES = 32 * 2**20


@dataclass(frozen=True)
class ReadSettings:
    """What a shard reader needs (picklable, sent with every read task)."""

    sampling: SamplingSpec
    layout: OutputLayout
    classes: Any = None  # sdedit_kernel.ClassLabels of a class-conditional model
    options: Mapping[str, Any] | None = field(default=None, repr=False)  # input's; may hold credentials
    tracker: Any = None


def manifest_bytes(shards: list[Shard], options: Mapping[str, Any]) -> int:
    total = 0
    for uri in dict.fromkeys(s.uri for s in shards):
        fs, path = url_to_fs(uri, options)
        total += fs.size(path) or 0
    return total


def small_manifests(shards: list[Shard], options: Mapping[str, Any]) -> bool:
    """Small enough (rows and bytes) to be read by the driver itself."""
    rows = sum(s.rows for s in shards)
    return rows <= SMALL_MANIFEST_ROWS and manifest_bytes(shards, options) <= SMALL_MANIFESTS_BYTES


def read_in_driver(shards: list[Shard], work: WorkPlan, settings: ReadSettings) -> list[tuple[Shard, pa.Table]]:
    """Every shard's rows read here, the ids checked across all of them; the pending shards' rows, done
    outputs marked. Raises ManifestError for missing / duplicate ids."""
    options = settings.options or {}
    tables = [read_shard(s, options, settings.classes) for s in shards]
    check_ids(pa.chunked_array([t.column("id") for t in tables], pa.string()))
    pending = {s.name for s in work.pending}
    return [(s, with_done(t, work.done.get(s.name), settings)) for s, t in zip(shards, tables, strict=True)
            if s.name in pending]


def open_manifest(shards: list[Shard], work: WorkPlan, settings: ReadSettings, rows_per_block: int,
                  blocks: int = 64, cpus: float = 0.25) -> ray.data.Dataset | None:
    """The pending shards' rows in blocks of ``rows_per_block`` rows, so that every actor gets work and
    batches stream (None: nothing to do); raises ManifestError for missing / duplicate ids.

    A manifest read in the driver is cut here into at most ``blocks`` blocks (of at least
    ``rows_per_block`` rows): Ray Data's repartition of one block into many runs as a task of a whole
    CPU, which on a small machine keeps decoding from starting until it has cut every block (13 s for
    1,000 rows on 2 cores before the first batch reached the model), and each block made in the driver
    costs a few milliseconds (so not thousands of them)."""
    options = settings.options or {}
    if small_manifests(shards, options):
        rows = [table for _, table in read_in_driver(shards, work, settings)]
        if not rows:
            return None
        table = pa.concat_tables(rows)
        size = max(rows_per_block, math.ceil(table.num_rows / blocks))
        return ray.data.from_arrow([table.slice(lo, size) for lo in range(0, table.num_rows, size)])
    check_unique_ids(shards, options)
    if not work.pending:
        return None
    items = [{**s.as_item(), "done": json.dumps(work.done[s.name]) if s.name in work.done else None}
             for s in work.pending]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_shards, batch_size=1, batch_format="pyarrow", num_cpus=cpus, fn_kwargs={"settings": settings},
    ).repartition(target_num_rows_per_block=rows_per_block, strict=True)


def read_shards(batch: pa.Table, settings: ReadSettings) -> pa.Table:
    """Shard items -> their normalised manifest rows, done outputs marked (a Ray task)."""
    tables = []
    for item in batch.to_pylist():
        done = json.loads(item["done"]) if item["done"] else None
        table = read_shard(item, settings.options or {}, settings.classes)
        tables.append(with_done(table, done, settings))
    return pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()


def with_done(table: pa.Table, done: Mapping[str, list[str]] | None, settings: ReadSettings) -> pa.Table:
    """Mark the outputs already made, and tell the tracker how many this shard will have."""
    if done:
        column = pa.array([done.get(i) for i in table.column("id").to_pylist()], pa.list_(pa.string()))
        table = table.set_column(table.schema.get_field_index("done"), "done", column)
    if table.num_rows and settings.tracker is not None:  # the local executor has no tracker to tell
        expected = sum(len(planned_outputs(row, settings.sampling, settings.layout)) for row in table.to_pylist())
        tell(settings.tracker, "expect", table.column("shard")[0].as_py(), expected)
    return table
