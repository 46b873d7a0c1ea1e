"""Finishing a shard: its index file(s), its WebDataset tar, then its record, published in that order.

A shard is finished when ``OUT/shards/<shard>.json`` exists; it is written (atomically) only after
the shard's rows are in ``OUT/index/<shard>.parquet`` (and ``.1.parquet``, ... beyond
``output.rows_per_index_file``) and, with WebDataset output, after ``OUT/webdataset/<shard>.tar``.
The record holds the shard's counts (outputs, failures by reason, notes) and this run's share, so a
summary or a resume reads records, never the index. What a finish merges: the parts this run wrote
(``OUT/.work/<shard>/<run>-*.parquet``), plus the ok rows an earlier run left for outputs this run did
not make again (its parts, or the index of a shard that has grown since it was finished). Each
output appears once; the rows are sorted by (id, t0, sample). A kill during a finish leaves the
parts in place and no record, so the next run finishes the shard again from the same rows.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.index import INDEX_DIR, conform, write_parquet
from pipeline.naming import IMAGES_DIR, WEBDATASET_DIR, OutputLayout, split_tar_path
from pipeline.outdir import RECORDS_DIR, WORK_DIR
from pipeline.storage import is_local, join_uri, list_names, url_to_fs, write_atomic
from pipeline.summary import index_counts
from pipeline.write import part_dir, staged_image

IMAGE_METADATA = "metadata.parquet"  # the name datasets' imagefolder loader looks for


@dataclass(frozen=True)
class FinishSettings:
    """What finishing a shard needs (picklable: it runs as a Ray task)."""

    out_uri: str
    layout: OutputLayout
    embed_images: bool
    rows_per_file: int
    run_id: str
    label_names: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # output's; may hold credentials


def record_path(shard: str) -> str:
    return f"{RECORDS_DIR}/{shard}.json"


def index_files(shard: str, count: int) -> list[str]:
    return [f"{INDEX_DIR}/{shard}{'' if k == 0 else f'.{k}'}.parquet" for k in range(max(count, 1))]


def read_records(out_uri: str, options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every finished shard's record, by shard name: one listing and one batched read."""
    fs, root = url_to_fs(out_uri, options)
    folder = join_uri(root, RECORDS_DIR)
    paths = [join_uri(folder, n) for n in list_names(fs, folder) if n.endswith(".json") and not n.startswith(".")]
    if not paths:
        return {}
    contents = fs.cat(paths, on_error="omit")  # concurrent on object stores
    records = {}
    for data in contents.values():
        record = json.loads(data)
        records[record["shard"]] = record
    return records


def rows_so_far(out_uri: str, options: Mapping[str, Any] | None, shard: str,
               previous: Mapping[str, Any] | None) -> tuple[pa.Table | None, list[tuple[str, pa.Table]]]:
    """An unfinished shard's rows so far: the index of its earlier finish (a grown shard) and its parts
    as (part name, table); unreadable parts (never published whole by this version) are skipped."""
    fs, root = url_to_fs(out_uri, options)
    finished = None
    if previous:
        tables = [_read(fs, join_uri(root, rel)) for rel in previous.get("index_files", [])]
        tables = [t for t in tables if t is not None]
        finished = pa.concat_tables(tables, promote_options="default") if tables else None
    parts = []
    folder = join_uri(root, part_dir(shard))
    for name in sorted(list_names(fs, folder)):
        if name.endswith(".parquet") and not name.startswith("."):
            table = _read(fs, join_uri(folder, name))
            if table is not None:
                parts.append((name, table))
    return finished, parts


def _read(fs: Any, path: str) -> pa.Table | None:
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f)
    except Exception:  # noqa: BLE001 - gone, foreign or truncated: its outputs are made again
        return None


def finish_shard(shard: Mapping[str, Any], settings: FinishSettings,
                 previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge, publish and record one shard whose outputs are all written (a Ray task); its record."""
    fs, root = url_to_fs(settings.out_uri, settings.options)
    name = shard["name"]
    finished, parts = rows_so_far(settings.out_uri, settings.options, name, previous)
    ours = [conform(t, settings.embed_images, settings.label_names) for n, t in parts
            if n.startswith(f"{settings.run_id}-")]
    earlier = [conform(t, settings.embed_images, settings.label_names) for n, t in parts
               if not n.startswith(f"{settings.run_id}-")]
    if finished is not None:
        earlier.insert(0, conform(finished, settings.embed_images, settings.label_names))
    schema = conform(pa.table({}), settings.embed_images, settings.label_names).schema
    new = _unique(pa.concat_tables(ours) if ours else schema.empty_table(), settings.layout, set())
    made = set(_keys(new, settings.layout))
    kept = _unique(pa.concat_tables(earlier) if earlier else schema.empty_table(), settings.layout, made,
                   ok_only=True)
    table = pa.concat_tables([kept, new])
    if table.num_rows:
        table = table.take(pc.sort_indices(table, [("id", "ascending"), ("t0", "ascending"),
                                                   ("sample", "ascending")]))
    tar = None
    if settings.layout.webdataset:
        tar = _pack_tar(fs, root, name, table, settings.layout, previous)
    files = index_files(name, -(-table.num_rows // settings.rows_per_file))
    for k, rel in enumerate(files):
        write_parquet(fs, join_uri(root, rel), table.slice(k * settings.rows_per_file, settings.rows_per_file))
    for rel in (previous or {}).get("index_files", []):
        if rel not in files and fs.exists(join_uri(root, rel)):
            fs.rm(join_uri(root, rel))
    metadata = None
    if not settings.embed_images and not settings.layout.webdataset:
        metadata = write_image_metadata(fs, root, name, table)
    record = {
        "shard": name, "source": {k: shard[k] for k in ("uri", "format", "start", "stop")},
        "rows": shard["stop"] - shard["start"], **index_counts(table), "outputs_new": new.num_rows,
        "items_new": len(set(new.column("id").to_pylist())),
        "model_seconds_new": round(sum(v or 0.0 for v in new.column("duration_ms").to_pylist()) / 1000, 3),
        "run_id": settings.run_id, "index_files": files, "webdataset": tar, "image_metadata": metadata,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(fs, join_uri(root, record_path(name)), (json.dumps(record, indent=1) + "\n").encode())
    folder = join_uri(root, part_dir(name))
    fs.invalidate_cache(folder)
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
    return record


def image_metadata_path(shard: str) -> str:
    return f"{IMAGES_DIR}/{shard}/{IMAGE_METADATA}"


def write_image_metadata(fs: Any, root: str, shard: str, table: pa.Table) -> str:
    """``OUT/images/<shard>/metadata.parquet``: the shard's index rows plus ``file_name`` (the image's
    name in that folder; null for error rows). It is what lets ``datasets.load_dataset(OUT)`` give
    an Image feature when the images are files: its imagefolder loader opens a metadata file's
    ``file_name`` relative to the metadata file (and refuses ``..``), while an index path relative to OUT
    would be opened relative to the reader's working directory. Returns its path relative to OUT."""
    names = pc.replace_substring_regex(table.column("image").cast(pa.string()), pattern=r"^.*/", replacement="")
    rel = image_metadata_path(shard)
    write_parquet(fs, join_uri(root, rel), table.append_column(pa.field("file_name", pa.string()), names))
    return rel


def backfill_image_metadata(out_uri: str, options: Mapping[str, Any] | None,
                            records: Mapping[str, Mapping[str, Any]]) -> int:
    """Write the image metadata of finished shards whose record (``records``: :func:`read_records`'
    result) has none: shards finished by a version before 2026-11-30, kept by a resume. How many were written."""
    fs, root = url_to_fs(out_uri, options)
    written = 0
    for name, record in records.items():
        if "image_metadata" in record or record.get("webdataset"):
            continue
        tables = [_read(fs, join_uri(root, rel)) for rel in record.get("index_files", [])]
        tables = [t for t in tables if t is not None and "image" in t.column_names
                  and not pa.types.is_struct(t.schema.field("image").type)]
        if tables:
            write_image_metadata(fs, root, name, pa.concat_tables(tables, promote_options="default"))
            written += 1
    return written


def _keys(table: pa.Table, layout: OutputLayout) -> Iterator[tuple[str, float | None, int]]:
    for item_id, t0, sample in zip(table.column("id").to_pylist(), table.column("t0").to_pylist(),
                                   table.column("sample").to_pylist(), strict=True):
        yield layout.key(item_id, t0 if t0 is not None else 0.0, sample)


def _unique(table: pa.Table, layout: OutputLayout, exclude: set[Any], ok_only: bool = False) -> pa.Table:
    """One row per output (the first), none of ``exclude``; ``ok_only``: ok rows only."""
    seen = set(exclude)
    keep = []
    statuses = table.column("status").to_pylist() if table.num_rows else []
    for i, key in enumerate(_keys(table, layout)):
        if key in seen or (ok_only and statuses[i] != "ok"):
            continue
        seen.add(key)
        keep.append(i)
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


def _pack_tar(fs: Any, root: str, shard: str, table: pa.Table, layout: OutputLayout,
              previous: Mapping[str, Any] | None) -> str:
    """``OUT/webdataset/<shard>.tar``: per ok output its image and ``<key>.json`` (the index row)."""
    rel = f"{WEBDATASET_DIR}/{shard}.tar"
    old = None
    if previous and previous.get("webdataset") and fs.exists(join_uri(root, previous["webdataset"])):
        old = tarfile.open(fileobj=fs.open(join_uri(root, previous["webdataset"]), "rb"))
    try:
        with _atomic_file(fs, join_uri(root, rel)) as f, \
                tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for row in table.to_pylist():
                if row["status"] != "ok":
                    continue
                member = split_tar_path(row["image"]["path"] if isinstance(row["image"], dict) else row["image"])[1]
                data = _image_bytes(fs, root, shard, member, row, old)
                meta = {k: v for k, v in row.items() if k != "image"}
                meta["image"] = f"{rel}/{member}"
                key = member.rsplit(".", 1)[0]
                _add(tar, member, data)
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True, default=str).encode())
    finally:
        if old is not None:
            old.close()
    return rel


def _image_bytes(fs: Any, root: str, shard: str, member: str, row: Mapping[str, Any], old: Any) -> bytes:
    if isinstance(row["image"], dict) and row["image"].get("bytes"):
        return row["image"]["bytes"]
    try:
        return fs.cat_file(join_uri(root, staged_image(shard, member)))
    except FileNotFoundError:
        pass
    if old is not None:
        extracted = old.extractfile(member)
        if extracted is not None:
            return extracted.read()
    raise FileNotFoundError(f"{member}: not staged under {WORK_DIR}/{shard}/ nor in the shard's earlier tar")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same outputs make the same tar
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@contextmanager
def _atomic_file(fs: Any, path: str) -> Iterator[Any]:
    """A file that appears at ``path`` whole or not at all, written as a stream (tars may be large)."""
    if not is_local(fs):
        with fs.open(path, "wb") as f:  # an object appears when its upload completes
            yield f
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".{uuid.uuid4().hex[:6]}.tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_empty_work(out_uri: str, options: Mapping[str, Any] | None) -> None:
    """``OUT/.work`` once every shard of the run is finished (each removes its own parts folder)."""
    fs, root = url_to_fs(out_uri, options)
    work = join_uri(root, WORK_DIR)
    try:
        if fs.exists(work) and not fs.ls(work):
            fs.rm(work, recursive=True)
    except FileNotFoundError:
        pass
