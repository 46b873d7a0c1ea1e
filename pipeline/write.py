"""Writing: encode outputs, publish image files atomically through fsspec, emit index rows.

Runs as plain-function Ray tasks on CPUs after the model stage. A failed write turns that output into
an error row; it never stops the job. The returned table is the index block for these outputs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.index import to_index_table
from pipeline.naming import image_relpath
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
    storage_options: Mapping[str, Any] = field(default_factory=dict)


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
            rel = image_relpath(row["id"], row["sample"], settings.image_format)
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
