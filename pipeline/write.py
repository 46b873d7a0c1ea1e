"""Writing: encode outputs, publish image files atomically through fsspec, and each batch's index rows.

Runs as plain-function Ray tasks on CPUs after the model stage. A failed write turns that output into
an error row; it never stops the job. Images go to ``OUT/images/<shard>/`` (with WebDataset output,
staged under ``OUT/.work/<shard>/images/`` until the shard's tar is packed); the batch's index rows
go, per shard, to a part file ``OUT/.work/<shard>/<run>-<key>.parquet`` whose name is fixed by its
outputs (a retried task replaces its own file). When a shard's every output is written, the driver
merges its parts into the shard's index file and publishes its record (:mod:`pipeline.finalize`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import ItemError
from pipeline.images import WorkingSize, encode_image
from pipeline.index import to_index_table, write_parquet
from pipeline.ledger import work_key
from pipeline.naming import OutputLayout
from pipeline.outdir import WORK_DIR
from pipeline.spec import OutputSpec, SamplingSpec
from pipeline.storage import join_uri, url_to_fs, write_atomic
from pipeline.tracker import tell


def part_dir(shard: str) -> str:
    return f"{WORK_DIR}/{shard}"


def staged_image(shard: str, member: str) -> str:
    """Where a WebDataset output waits for its shard's tar, relative to OUT."""
    return f"{WORK_DIR}/{shard}/images/{member}"


@dataclass(frozen=True)
class WriteSettings:
    """What the write stage needs (picklable, sent with every task)."""

    output: OutputSpec
    sampling: SamplingSpec  # sampler and passes are recorded in every index row
    working: WorkingSize
    layout: OutputLayout
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # output's; may hold credentials
    label_names: tuple[str, ...] = ()  # a class-conditional model's class names: the index's ClassLabel
    run_id: str = "run"  # names this run's part files
    tracker: Any = None  # a pipeline.tracker.ShardTracker handle, or None


def write_batch(batch: pa.Table, settings: WriteSettings) -> pa.Table:
    """Model-stage rows -> index rows in part files, writing each ok output (a Ray task).

    Returns one row per shard touched: how many outputs of it this batch wrote.
    """
    out = settings.output
    fs, root = url_to_fs(out.uri, settings.storage_options)
    w, layout = settings.working, settings.layout
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in batch.to_pylist():
        record = {k: v for k, v in row.items() if k != "output"}
        record.update(sampler=settings.sampling.sampler, passes=settings.sampling.passes, image=None)
        if row["status"] == "ok":
            rel = layout.image_path(row["shard"], row["id"], row["t0"], row["sample"])
            target = staged_image(row["shard"], layout.member(row["id"], row["t0"], row["sample"])) \
                if layout.webdataset else rel
            try:
                data = encode_image(np.frombuffer(row["output"], np.uint8).reshape(w.height, w.width, w.channels),
                                    out.format, out.quality)
                write_atomic(fs, join_uri(root, target), data)
                record.update(width=w.width, height=w.height,
                              image={"bytes": data, "path": rel} if out.embed_images else rel)
            except Exception as e:  # noqa: BLE001 - a failed write is this output's failure
                failure = ItemError("write error", f"{type(e).__name__}: {e}")
                record.update(status="error", error=failure.message, error_kind=failure.kind)
        by_shard[row["shard"]].append(record)
    written: dict[str, list[Any]] = {"shard": [], "outputs": []}
    for shard, rows in by_shard.items():
        table = to_index_table(rows, out.embed_images, settings.label_names)
        part = work_key((r["id"], r["t0"], r["sample"]) for r in rows)
        write_parquet(fs, join_uri(root, part_dir(shard), f"{settings.run_id}-{part}.parquet"), table)
        tell(settings.tracker, "wrote", shard, part, len(rows))
        written["shard"].append(shard)
        written["outputs"].append(len(rows))
    return pa.table({"shard": pa.array(written["shard"], pa.string()),
                     "outputs": pa.array(written["outputs"], pa.int64())})
