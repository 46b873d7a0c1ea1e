"""Shards: the unit of work, output and resume. The manifests are cut into fixed row ranges.

Order (documented in docs/scaling.md): the manifests in the order the job gives them, a folder's
files sorted by path (names starting with ``.`` or ``_`` are skipped), rows in file order. Shard
``k`` of a file holds its rows ``[k * shard_rows, (k + 1) * shard_rows)``, so a manifest that grows
by appending rows, or a folder that gains files, keeps every earlier shard as it was (only its last
shard may grow). A shard is named ``<file tag>-<k:05d>``, the tag being the file's name without its
extension (its path inside a manifest folder; ``-m<i>`` added when two manifests' files share one).

Planning needs no row in memory: a Parquet file's row count is in its footer; a CSV or JSON Lines
file is scanned once, in chunks, for the byte offset where each shard starts (a CSV newline inside a
quoted field does not end a row; blank lines are no rows). A shard then reads only its own bytes
(its Parquet row groups, or its byte range plus the CSV header). Compressed CSV / JSON Lines
manifests (``.gz``) cannot seek: each shard's read decompresses from the file's start.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.manifest import (
    ManifestError,
    check_columns,
    csv_convert,
    csv_parse,
    manifest_format,
    normalize_batch,
    normalize_ids,
    peek_columns,
)
from pipeline.naming import safe_stem
from pipeline.rows import READ_COLUMNS
from pipeline.storage import absolute_uri, is_local, url_to_fs

DEFAULT_SHARD_ROWS = 10_000
_CHUNK = 16 * 2**20
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_EXTENSIONS = (".parquet", ".pq", ".csv", ".tsv", ".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class Shard:
    """One shard: rows ``[start, stop)`` of one manifest file (``byte_*``: where they lie, CSV / JSON Lines)."""

    name: str
    uri: str  # the manifest file, absolute (scheme kept); relative guide URIs resolve against it
    format: str
    start: int
    stop: int
    byte_start: int = 0
    byte_stop: int = 0
    header_end: int = 0  # CSV: the header row is bytes [0, header_end)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def as_item(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, shard: Shard | Mapping[str, Any]) -> Shard:
        """A shard from itself or from its item (a row of the shard list, extra keys ignored)."""
        return shard if isinstance(shard, Shard) else cls(**{k: shard[k] for k in cls.__dataclass_fields__})


def plan_shards(uris: list[str], declared_format: str, options: Mapping[str, Any],
                shard_rows: int = DEFAULT_SHARD_ROWS) -> list[Shard]:
    """Every shard of the manifests, in order; raises :class:`ManifestError` (a missing file, an empty
    manifest, a missing column). Holds offsets, never rows."""
    shards: list[Shard] = []
    used_tags: set[str] = set()
    for position, given in enumerate(uris):
        uri = absolute_uri(given)
        fmt = manifest_format(given, declared_format)
        fs, path = url_to_fs(uri, options)
        if not fs.exists(path):
            raise ManifestError(f"input.manifest: {uri} does not exist")
        if fs.isdir(path):
            files = sorted(f for f in fs.find(path) if not _hidden(posixpath.relpath(f, path)))
            named = [(f, posixpath.relpath(f, path)) for f in files]
        else:
            named = [(path, posixpath.basename(path))]
        before = len(shards)
        for file_path, relative in named:
            tag = _tag(relative)
            if tag in used_tags:
                tag = f"{tag}-m{position}"
            used_tags.add(tag)
            file_uri = file_path if is_local(fs) else fs.unstrip_protocol(file_path)
            shards.extend(_file_shards(fs, file_path, file_uri, fmt, tag, shard_rows, options))
        if len(shards) == before:
            raise ManifestError(f"input.manifest: {uri} has no rows")
    return shards


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _tag(relative: str) -> str:
    name = relative
    for suffix in _COMPRESSED:
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    for suffix in _EXTENSIONS:
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return safe_stem(name.replace("/", "_"))


def _compressed(path: str) -> bool:
    return path.lower().endswith(_COMPRESSED)


def _file_shards(fs: Any, path: str, uri: str, fmt: str, tag: str, shard_rows: int,
                 options: Mapping[str, Any]) -> list[Shard]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            total = parquet.metadata.num_rows
            if total:
                check_columns(uri, fmt, parquet.schema_arrow.names)  # top-level names (an image struct is one)
        return [Shard(f"{tag}-{k:05d}", uri, fmt, start, min(start + shard_rows, total))
                for k, start in enumerate(range(0, total, shard_rows))]
    with fs.open(path, "rb", compression="infer") as f:
        header_end, offsets, total = scan_rows(f, fmt == "csv", shard_rows)
    if fmt == "csv" and total:
        check_columns(uri, fmt, peek_columns(uri, fmt, options) or [])
    return [Shard(f"{tag}-{k:05d}", uri, fmt, k * shard_rows, min((k + 1) * shard_rows, total),
                  offsets[k], offsets[k + 1], header_end)
            for k in range(len(offsets) - 1)]


def scan_rows(f: Any, csv: bool, shard_rows: int) -> tuple[int, list[int], int]:
    """Stream a CSV / JSON Lines file once: (end of the CSV header, offsets, rows).

    ``offsets[k]`` is where shard k's bytes start and ``offsets[-1]`` the end of the data. A row is a
    line with a non-blank byte; in a CSV, a newline between an odd number of quotes is inside a field.
    """
    position = 0
    in_quotes = False
    line_has_content = False
    rows = 0
    header_end = 0 if not csv else -1
    offsets: list[int] = []
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        data = np.frombuffer(chunk, np.uint8)
        newlines = np.flatnonzero(data == 10)
        if csv:
            quotes = np.cumsum(data == 34, dtype=np.int64)
            inside = (quotes[newlines] + int(in_quotes)) % 2 == 1
            in_quotes = bool((int(quotes[-1]) + int(in_quotes)) % 2)
            newlines = newlines[~inside]
        content = np.flatnonzero(~np.isin(data, (9, 10, 13, 32)))
        # does each line ending here have content? content positions in [previous end + 1, newline)
        starts = np.concatenate(([-1], newlines[:-1])) + 1
        counts = np.searchsorted(content, newlines) - np.searchsorted(content, starts)
        has = counts > 0
        if len(has):
            has[0] = has[0] or line_has_content
        ends = newlines[has] + position + 1  # where the next row may start
        header_end, rows = _advance(ends, header_end, rows, offsets, shard_rows)
        if len(newlines):
            tail = data[newlines[-1] + 1:]
            line_has_content = bool(np.any(~np.isin(tail, (9, 10, 13, 32))))
        else:
            line_has_content = line_has_content or bool(len(content))
        position += len(chunk)
    if line_has_content:  # a last row without a newline
        header_end, rows = _advance(np.array([position], np.int64), header_end, rows, offsets, shard_rows)
    if header_end == -1:  # a CSV with no header row at all
        header_end = position
    # the boundary after a last full shard is the data's end, not the start of another shard
    return header_end, [*offsets[: -(-rows // shard_rows)], position], rows


def _advance(ends: np.ndarray, header_end: int, rows: int, offsets: list[int], shard_rows: int) -> tuple[int, int]:
    """Count the rows ending at ``ends`` (where the next row may start); append where each shard starts."""
    if len(ends) and header_end == -1:  # the first row of a CSV is its header
        header_end, ends = int(ends[0]), ends[1:]
    if not len(ends):
        return header_end, rows
    if not offsets:
        offsets.append(max(header_end, 0))
    counted = rows + np.arange(1, len(ends) + 1)
    offsets.extend(int(b) for b in ends[counted % shard_rows == 0])
    return header_end, rows + len(ends)


def read_shard(shard: Shard | Mapping[str, Any], options: Mapping[str, Any], classes: Any = None) -> pa.Table:
    """A shard's rows, normalised (:func:`pipeline.manifest.normalize_batch`), with its ``shard`` column."""
    s = Shard.of(shard)
    fs, _ = url_to_fs(s.uri, options)
    raw = _raw_rows(s, options)
    table = normalize_batch(raw, fs=None if is_local(fs) else fs, json_lines=s.format == "jsonl", base=s.uri,
                            classes=classes)
    return table.set_column(table.schema.get_field_index("shard"), "shard", pa.array([s.name] * table.num_rows,
                                                                                      pa.string()))


def read_shard_ids(shard: Shard | Mapping[str, Any], options: Mapping[str, Any]) -> pa.Array:
    """Only a shard's ids, as the job names items (``1.0`` and ``1`` are the same id); nulls kept."""
    s = Shard.of(shard)
    raw = _raw_rows(s, options, columns=["id"])
    if s.format == "jsonl":
        values = [_json_id(line) for line in raw.column("text").to_pylist()]
        return normalize_ids(pa.array(values, pa.string()) if all(
            v is None or isinstance(v, str) for v in values) else values)
    return normalize_ids(raw.column("id") if "id" in raw.column_names else pa.nulls(raw.num_rows, pa.string()))


def _json_id(line: str) -> Any:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("id") if isinstance(record, dict) else None


def _raw_rows(s: Shard, options: Mapping[str, Any], columns: list[str] | None = None) -> pa.Table:
    fs, path = url_to_fs(s.uri, options)
    if s.format == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            wanted = [c for c in pf.schema_arrow.names if c in (columns or (*READ_COLUMNS, "image"))]
            return _parquet_rows(pf, s.start, s.stop, wanted)
    data = b"".join(_byte_range(fs, path, s.byte_start, s.byte_stop))
    if s.format == "jsonl":
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        return pa.table({"text": pa.array(lines, pa.string())})
    import pyarrow.csv as pacsv

    with fs.open(path, "rb", compression="infer") as f:
        header = f.read(s.header_end)
    convert = csv_convert()
    if columns is not None:
        convert.include_columns = columns
        convert.include_missing_columns = True
    return pacsv.read_csv(io.BytesIO(header + data), convert_options=convert, parse_options=csv_parse(s.uri))


def _byte_range(fs: Any, path: str, start: int, stop: int) -> Iterator[bytes]:
    with fs.open(path, "rb", compression="infer") as f:
        if _compressed(path):  # no seeking in a compressed stream: read up to the range
            left = start
            while left > 0:
                skipped = f.read(min(left, _CHUNK))
                if not skipped:
                    return
                left -= len(skipped)
        else:
            f.seek(start)
        left = stop - start
        while left > 0:
            data = f.read(min(left, _CHUNK))
            if not data:
                return
            left -= len(data)
            yield data


def _parquet_rows(pf: Any, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    meta = pf.metadata
    groups, first, offset = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset + n > start and offset < stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return pf.schema_arrow.empty_table().select(columns)
    table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)
