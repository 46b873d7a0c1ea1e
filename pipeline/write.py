"""Writing: encode outputs, publish image files atomically through fsspec, emit and write index rows.

Runs as plain-function Ray tasks on CPUs after the model stage. A failed write turns that output into
an error row; it never stops the job. The returned table is the index block for these outputs;
:class:`IndexDatasink` publishes those blocks as whole Parquet files.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink

from pipeline.errors import ItemError
from pipeline.images import WorkingSize, encode_image
from pipeline.index import INDEX_DIR, conform, to_index_table
from pipeline.naming import OutputLayout
from pipeline.redact import strip_userinfo
from pipeline.spec import OutputSpec, SamplingSpec
from pipeline.storage import join_uri, url_to_fs, write_atomic


@dataclass(frozen=True)
class WriteSettings:
    """What the write stage needs (picklable, sent with every task)."""

    output: OutputSpec
    sampling: SamplingSpec  # sampler and passes are recorded in every index row
    working: WorkingSize
    layout: OutputLayout
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # output's; may hold credentials
    label_names: tuple[str, ...] = ()  # a class-conditional model's class names: the index's ClassLabel


def write_batch(batch: pa.Table, settings: WriteSettings) -> pa.Table:
    """Model-stage rows -> index rows, writing each ok output to ``OUT/images/`` (a Ray task)."""
    out = settings.output
    fs, root = url_to_fs(out.uri, settings.storage_options)
    w = settings.working
    rows: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        record = {k: v for k, v in row.items() if k != "output"}
        record.update(sampler=settings.sampling.sampler, passes=settings.sampling.passes, image=None)
        if row["status"] == "ok":
            rel = settings.layout.image_path(row["id"], row["t0"], row["sample"])
            try:
                data = encode_image(np.frombuffer(row["output"], np.uint8).reshape(w.height, w.width, w.channels),
                                    out.format, out.quality)
                write_atomic(fs, join_uri(root, rel), data)
                record.update(width=w.width, height=w.height,
                              image={"bytes": data, "path": rel} if out.embed_images else rel)
            except Exception as e:  # noqa: BLE001 - a failed write is this output's failure
                failure = ItemError("write error", f"{type(e).__name__}: {e}")
                record.update(status="error", error=failure.message, error_kind=failure.kind)
        rows.append(record)
    return to_index_table(rows, out.embed_images, settings.label_names)


class IndexDatasink(Datasink[None]):
    """Writes the index as Parquet files that appear whole or not at all (Ray Data ``write_datasink``).

    Ray's own ``write_parquet`` streams into the final file name, so a reader (or a resume after a
    crash) could meet a truncated file. Here each file is encoded in memory and published with
    :func:`pipeline.storage.write_atomic` (temporary name + rename locally; a single whole-object
    upload on object stores). A file's name is fixed by the run and the write task, so a retried
    task replaces its own file instead of adding a second copy of its rows.
    """

    def __init__(self, out_uri: str, options: Mapping[str, Any] | None, embed_images: bool,
                 rows_per_file: int, label_names: tuple[str, ...] = ()) -> None:
        self.out_uri = out_uri
        self.options = dict(options or {})
        self.embed_images = embed_images
        self.rows_per_file = rows_per_file
        self.label_names = label_names
        self.run_id = uuid.uuid4().hex[:12]

    def __repr__(self) -> str:  # the options may hold credentials
        return f"IndexDatasink({strip_userinfo(self.out_uri)!r})"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "WriteIndex"

    def write(self, blocks: Iterable[Any], ctx: Any) -> None:
        tables = [conform(b if isinstance(b, pa.Table) else pa.table(b), self.embed_images, self.label_names)
                  for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        table = pa.concat_tables(tables)
        fs, root = url_to_fs(self.out_uri, self.options)
        # output.rows_per_index_file is a cap: Ray hands a task at least that many rows, often more.
        for part, offset in enumerate(range(0, table.num_rows, self.rows_per_file)):
            buffer = io.BytesIO()
            pq.write_table(table.slice(offset, self.rows_per_file), buffer)
            name = f"{self.run_id}-{ctx.task_idx:06d}-{part:04d}.parquet"
            write_atomic(fs, join_uri(root, INDEX_DIR, name), buffer.getvalue())
