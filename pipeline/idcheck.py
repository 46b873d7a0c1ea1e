"""The duplicate-id check without gathering ids: a hash-partitioned group-by over Ray tasks.

Every output is named after its item's id, so ids must be present and unique across all manifests,
finished shards included (a new row may not take the id of an item done long ago). Each task reads
only the ``id`` column of a group of shards and splits its ids into :data:`BUCKETS` parts by a hash
of their bytes; one task per bucket then counts its part. The guarantee is exact, as if every id
were compared with every other; the driver holds object references and at most five duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from pipeline.manifest import duplicate_ids, report_ids
from pipeline.shards import Shard, read_shard_ids

BUCKETS = 16
ROWS_PER_TASK = 500_000  # shards are grouped into tasks of about this many rows


def check_unique_ids(shards: list[Shard], options: Mapping[str, Any], num_cpus: float = 0.5) -> None:
    """Raise ``ManifestError`` for rows without id or ids given twice, across every shard."""
    groups: list[list[dict[str, Any]]] = [[]]
    rows = 0
    for shard in shards:
        if rows >= ROWS_PER_TASK:
            groups.append([])
            rows = 0
        groups[-1].append(shard.as_item())
        rows += shard.rows
    split = ray.remote(_split_ids).options(num_returns=BUCKETS + 1, num_cpus=num_cpus)
    parts = [split.remote(group, dict(options)) for group in groups if group]
    count = ray.remote(_bucket_duplicates).options(num_cpus=num_cpus)
    found = ray.get([count.remote(*[p[b] for p in parts]) for b in range(BUCKETS)])
    nulls = sum(ray.get([p[BUCKETS] for p in parts]))
    shown = [d for names, _ in found for d in names][:5]
    report_ids(nulls, (shown, sum(total for _, total in found)))


def _split_ids(shards: list[dict[str, Any]], options: dict[str, Any]) -> tuple[Any, ...]:
    """One group's ids split into BUCKETS arrays by hash, then its count of rows without id."""
    ids = [read_shard_ids(s, options) for s in shards]
    table = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    nulls = table.null_count
    present = table.drop_null()
    buckets = bucket_of(present, BUCKETS)
    return (*[present.filter(pa.array(buckets == b)) for b in range(BUCKETS)], nulls)


def _bucket_duplicates(*parts: pa.Array) -> tuple[list[str], int]:
    return duplicate_ids(pa.chunked_array([p for p in parts if len(p)], pa.string()))


def bucket_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """A hash of each id's UTF-8 bytes, modulo ``buckets``: the same in every process (Python's own
    ``hash`` of a str is salted per process), vectorised over the whole array."""
    if not len(ids):
        return np.zeros(0, np.int64)
    ids = pa.concat_arrays([ids.cast(pa.large_string())])  # fresh buffers: offset 0, 64-bit offsets
    offsets = np.frombuffer(ids.buffers()[1], np.int64, count=len(ids) + 1)
    data = np.frombuffer(ids.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].astype(np.uint64)
    starts = offsets[:-1] - offsets[0]
    lengths = np.diff(offsets)
    position = np.arange(len(data), dtype=np.uint64) - np.repeat(starts, lengths).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = data * (position * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019))
        h = np.add.reduceat(mixed, starts) if len(data) else np.zeros(len(ids), np.uint64)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return (h % np.uint64(buckets)).astype(np.int64)
