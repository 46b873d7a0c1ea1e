"""The Parquet index: its schema (one row per output), and reading it back.

One explicit schema for every file, so that a column that happens to be all null in one block
(``mask``, ``error``) still has its real type and every reader (pandas, pyarrow, Ray Data,
Hugging Face ``datasets``) sees one consistent table.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.rows import TYPES, names
from pipeline.storage import arrow_filesystem, join_uri, url_to_fs, write_atomic

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
INDEX_COLUMNS: list[str] = list(names("index"))  # the contract columns, in order (pipeline.rows)
INDEX_DIR = "index"


def index_schema(embed_images: bool = False, label_names: Sequence[str] | None = None) -> pa.Schema:
    """The index schema; with embedded images it carries the ``huggingface`` features metadata, where
    ``label`` is a ClassLabel with the model's class names when it has them."""
    fields = [(name, IMAGE_STRUCT if name == "image" and embed_images else TYPES[name]) for name in INDEX_COLUMNS]
    schema = pa.schema(fields)
    metadata = {b"pandas": _PANDAS_METADATA}
    if embed_images:
        features = _hf_features(schema, label_names)
        metadata[b"huggingface"] = json.dumps({"info": {"features": features}}).encode()
    return schema.with_metadata(metadata)


def _pandas_metadata() -> bytes:
    """pandas' own schema metadata, for the integer columns only: pandas then reads them as its
    nullable Int32 / Int64 (an error row's null width stays a missing integer, not a float NaN)."""
    columns = [{"name": name, "field_name": name, "pandas_type": str(TYPES[name]),
                "numpy_type": str(TYPES[name]).capitalize(), "metadata": None}
               for name in INDEX_COLUMNS if pa.types.is_integer(TYPES[name])]
    return json.dumps({"index_columns": [], "column_indexes": [], "columns": columns,
                       "creator": {"library": "sdedit-pipeline"}}).encode()


_PANDAS_METADATA = _pandas_metadata()


HF_DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64", pa.float64(): "float64"}  # datasets'


def _hf_features(schema: pa.Schema, label_names: Sequence[str] | None) -> dict[str, Any]:
    """Hugging Face ``datasets`` features for every column: ``image`` decodes to a PIL image."""
    features = {
        f.name: {"_type": "Image"} if f.name == "image" else {"dtype": HF_DTYPES[f.type], "_type": "Value"}
        for f in schema
    }
    if label_names:
        features["label"] = {"names": list(label_names), "_type": "ClassLabel"}
    return features


def to_index_table(rows: Sequence[Mapping[str, Any]], embed_images: bool = False,
                   label_names: Sequence[str] | None = None) -> pa.Table:
    schema = index_schema(embed_images, label_names)
    records = [{name: row.get(name) for name in INDEX_COLUMNS} for row in rows]
    return pa.Table.from_pylist(records, schema=schema)


def write_parquet(fs: Any, path: str, table: pa.Table) -> None:
    """Publish ``table`` as one whole Parquet file (encoded in memory, then :func:`write_atomic`)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomic(fs, path, buffer.getvalue())


def read_index(out_uri: str, options: Mapping[str, Any] | None = None,
               columns: list[str] | None = None, max_files: int | None = None) -> pa.Table:
    """The index of an output folder (all ``OUT/index/*.parquet`` files) as one table.

    ``max_files``: read at most this many files, spread evenly over the index (contact sheets of a
    job of millions of outputs need a few items, not the whole index in memory).
    """
    fs, path = url_to_fs(join_uri(out_uri, INDEX_DIR), options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{join_uri(out_uri, INDEX_DIR)} does not exist: no index written there")
    source: Any = path
    if max_files is not None:
        files = sorted(f for f in fs.find(path) if f.endswith(".parquet") and not
                       f.rsplit("/", 1)[-1].startswith((".", "_")))
        if len(files) > max_files:
            step = len(files) / max_files
            source = [files[int(k * step)] for k in range(max_files)]
    dataset = pq.ParquetDataset(source, filesystem=arrow_filesystem(fs))
    if columns is None:
        return dataset.read()
    # An index written by an older version lacks the newer columns: they come back as nulls.
    present = [c for c in columns if c in dataset.schema.names]
    table = dataset.read(columns=present)
    for name in columns:
        if name not in present:
            table = table.append_column(name, pa.nulls(table.num_rows, TYPES.get(name, pa.string())))
    return table.select(columns)


def conform(table: pa.Table, embed_images: bool = False, label_names: Sequence[str] | None = None) -> pa.Table:
    """``table`` in the current index schema; columns an older index lacks are added as nulls.

    An index written before ``generator_seed`` existed called the generator's seed ``seed`` and the
    item's seed ``base_seed``: those are renamed to today's meaning.
    """
    if "base_seed" in table.column_names and "generator_seed" not in table.column_names:
        renamed = {"seed": "generator_seed", "base_seed": "seed"}
        table = table.rename_columns([renamed.get(n, n) for n in table.column_names])
    schema = index_schema(embed_images, label_names)
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata()).cast(schema)

