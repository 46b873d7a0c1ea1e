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
from PIL import Image
from ray.data import Datasink

from pipeline.index import INDEX_DIR, conform, to_index_table
from pipeline.naming import image_relpath
from pipeline.redact import strip_userinfo
from pipeline.storage import join_uri, url_to_fs, write_atomic

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class WriteSettings:
    """What the write stage needs (picklable, sent with every task)."""

    out_uri: str
    image_format: str
    quality: int
    embed_images: bool
    sampler: str
    passes: int
    channels: int
    height: int
    width: int
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    sweep: bool = False  # a t0 sweep: image names carry t0 (pipeline.naming.image_relpath)


def encode_image(pixels: np.ndarray, image_format: str, quality: int) -> bytes:
    """uint8 [H, W, C] -> file bytes. PNG is lossless; JPEG / WebP use ``quality``."""
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    if image_format == "webp" and img.mode == "L":
        img = img.convert("RGB")  # WebP has no grey mode
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = {} if image_format == "png" else {"quality": quality}
    img.save(buffer, format=PIL_FORMATS[image_format], **kwargs)
    return buffer.getvalue()


def write_batch(batch: pa.Table, settings: WriteSettings) -> pa.Table:
    """Model-stage rows -> index rows, writing each ok output to ``OUT/images/`` (a Ray task)."""
    fs, root = url_to_fs(settings.out_uri, settings.storage_options)
    shape = (settings.height, settings.width, settings.channels)
    rows: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        record = {k: v for k, v in row.items() if k != "output"}
        record.update(sampler=settings.sampler, passes=settings.passes, image=None)
        if row["status"] == "ok":
            rel = image_relpath(row["id"], row["sample"], settings.image_format,
                                row["t0"] if settings.sweep else None)
            try:
                data = encode_image(np.frombuffer(row["output"], np.uint8).reshape(shape),
                                    settings.image_format, settings.quality)
                write_atomic(fs, join_uri(root, rel), data)
                record.update(width=settings.width, height=settings.height,
                              image={"bytes": data, "path": rel} if settings.embed_images else rel)
            except Exception as e:  # noqa: BLE001 - a failed write is this output's failure
                record.update(status="error", error=f"write error: {type(e).__name__}: {e}")
        rows.append(record)
    return to_index_table(rows, settings.embed_images)


class IndexDatasink(Datasink[None]):
    """Writes the index as Parquet files that appear whole or not at all (Ray Data ``write_datasink``).

    Ray's own ``write_parquet`` streams into the final file name, so a reader (or a resume after a
    crash) could meet a truncated file. Here each file is encoded in memory and published with
    :func:`pipeline.storage.write_atomic` (temporary name + rename locally; a single whole-object
    upload on object stores). A file's name is fixed by the run and the write task, so a retried
    task replaces its own file instead of adding a second copy of its rows.
    """

    def __init__(self, out_uri: str, options: Mapping[str, Any] | None, embed_images: bool,
                 rows_per_file: int) -> None:
        self.out_uri = out_uri
        self.options = dict(options or {})
        self.embed_images = embed_images
        self.rows_per_file = rows_per_file
        self.run_id = uuid.uuid4().hex[:12]

    def __repr__(self) -> str:  # the options may hold credentials
        return f"IndexDatasink({strip_userinfo(self.out_uri)!r})"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def get_name(self) -> str:
        return "WriteIndex"

    def write(self, blocks: Iterable[Any], ctx: Any) -> None:
        tables = [conform(pa.table(b) if not isinstance(b, pa.Table) else b, self.embed_images) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        buffer = io.BytesIO()
        pq.write_table(pa.concat_tables(tables), buffer)
        fs, root = url_to_fs(self.out_uri, self.options)
        name = f"{self.run_id}-{ctx.task_idx:06d}.parquet"
        write_atomic(fs, join_uri(root, INDEX_DIR, name), buffer.getvalue())
