"""Manifest rows: Parquet, CSV or JSON Lines manifest rows -> normalised item rows, and the id rules.

A manifest is read shard by shard (:mod:`pipeline.shards`); each shard's rows are normalised to one schema
(:data:`MANIFEST_SCHEMA`): ids become strings, guide and mask URIs (and the base, overlay, original
and edited of composite and stroke-edit rows) are kept as given, with the manifest file they resolve
against (:func:`resolved`: relative URIs are relative to the manifest's own folder),
each row's way of giving its guide is recorded in ``workflow``, and per-item overrides are parsed.
A malformed override or a row that mixes ways does not stop the job: it is carried in ``error`` /
``error_kind`` and becomes an error row later. Only what makes the whole job
ambiguous (a missing column, missing or duplicate ids) stops it before any work starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ItemError
from pipeline.rows import MANIFEST_SCHEMA, READ_COLUMNS, URI_COLUMNS
from pipeline.spec import OVERRIDES
from pipeline.storage import absolute_uri, resolve_relative, url_to_fs
from sdedit_kernel import ClassLabels

# A row gives its guide in exactly one of these ways (docs/workflows.md); the manifest needs an id
# and the columns of at least one of them.
WORKFLOW_COLUMNS = {"guide": ("guide",), "composite": ("base", "overlay"), "stroke_edit": ("original", "edited")}
_OPTIONAL = {"composite": ("overlay_mask", "x", "y", "scale"), "stroke_edit": ()}
_NOT_A_WAY = ("id", "t0", "seed", "samples", "mask", "margin", "threshold", "label",  # columns any way may carry
              "guidance_scale", "prompt", "negative_prompt")
_FORMATS = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv", ".csv.gz", ".tsv"),
    "jsonl": (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz"),
}


class ManifestError(ValueError):
    """The manifests as a whole cannot be run (missing file or column, missing or duplicate ids)."""


def missing_columns(columns: list[str]) -> list[str]:
    """What a manifest's columns lack: ``id``, and the columns of at least one way to give guides."""
    have = set(columns) | ({"guide"} if "image" in columns else set())  # an image column gives guides
    missing = [] if "id" in have else ["id"]
    if not any(set(needed) <= have for needed in WORKFLOW_COLUMNS.values()):
        missing.append("guide (or image, or base + overlay, or original + edited)")
    return missing


def manifest_format(uri: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    lowered = uri.lower().rstrip("/")
    for fmt, suffixes in _FORMATS.items():
        if lowered.endswith(suffixes):
            return fmt
    raise ManifestError(
        f"input.format: cannot tell the format of {uri!r} from its extension; set input.format"
    )


def peek_columns(uri: str, fmt: str, options: Mapping[str, Any]) -> list[str] | None:
    """Column names from a manifest file's header, without Ray (for validation); None for folders."""
    import csv
    import io

    fs, path = url_to_fs(absolute_uri(uri), options)
    if fs.isdir(path):
        return None
    with fs.open(path, "rb", compression="infer") as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(f).names
        first = io.TextIOWrapper(f, encoding="utf-8").readline()
    if not first.strip():
        return []
    if fmt == "csv":
        return next(csv.reader([first], delimiter="\t" if uri.lower().endswith(".tsv") else ","))
    row = json.loads(first)
    return list(row) if isinstance(row, dict) else []


def csv_convert() -> Any:
    import pyarrow.csv as pacsv

    # Only an empty cell is "no value": pyarrow's default null words ("NA", "null", "nan"...) would
    # turn an id "NA" into a missing id and an explicit "nan" t0 into no override.
    return pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("id", "label", "image", "prompt", "negative_prompt", *URI_COLUMNS)},
        strings_can_be_null=True, null_values=[""],
    )


def csv_parse(uri: str) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(delimiter="\t") if uri.lower().endswith(".tsv") else None


def check_columns(uri: str, fmt: str, columns: list[str]) -> None:
    if not columns:
        raise ManifestError(f"input.manifest: {uri} has no rows")
    missing = missing_columns(columns) if fmt != "jsonl" else []  # JSON: per row
    if missing:
        shown = ", ".join(columns)
        raise ManifestError(f"input.manifest: {uri} lacks column(s) {', '.join(missing)} (has: {shown})")


def normalize_batch(batch: pa.Table, fs: Any = None, json_lines: bool = False,
                    base: str | None = None, classes: ClassLabels | None = None) -> pa.Table:
    """Raw manifest rows -> :data:`MANIFEST_SCHEMA` rows (a plain function: runs as a Ray task).

    ``base``: the manifest URI every relative guide / mask URI resolves against; None: each row's
    own file, from the ``path`` column Ray adds when reading a folder (``fs`` restores its scheme).
    An ``image`` column (as Hugging Face ``datasets`` writes it: struct{bytes, path}, or plain bytes)
    gives each row's guide embedded; a string ``image`` is a guide URI.
    """
    paths = [base] * batch.num_rows if base is not None else batch.column("path").to_pylist()
    if json_lines:
        records = [_json_record(line) for line in batch.column("text").to_pylist()]
        columns = {name: [r.get(name) for r in records] for name in READ_COLUMNS}
    else:
        columns = {name: batch.column(name).to_pylist() if name in batch.column_names else [None] * len(paths)
                   for name in READ_COLUMNS}
    images = (records and [r.get("image") for r in records]) if json_lines else (
        batch.column("image").to_pylist() if "image" in batch.column_names else [None] * len(paths))
    out: dict[str, list[Any]] = {name: [] for name in MANIFEST_SCHEMA.names}
    for i, file_path in enumerate(paths):
        row_base = file_path if base is not None or fs is None else fs.unstrip_protocol(file_path)
        problems: list[ItemError] = []
        embedded = _embedded_image(images[i], columns, i, problems)
        out["guide_bytes"].append(embedded)
        out["id"].append(_id_text(columns["id"][i]))
        out["manifest"].append(row_base)
        for name in URI_COLUMNS:  # as given: decode resolves them against the row's manifest
            out[name].append(_text(columns[name][i]))
        given = {name for name in READ_COLUMNS if name not in _NOT_A_WAY and not _missing(columns[name][i])}
        if embedded is not None:
            given.add("guide")
        workflow = _workflow(given, problems)
        out["workflow"].append(workflow)
        for name in ("margin", "threshold"):
            out[name].append(_override(name, columns[name][i], problems))
        if out["margin"][-1] is not None and workflow == "guide":
            problems.append(ItemError("bad override", "margin applies to composite and stroke-edit rows only"))
        if out["threshold"][-1] is not None and workflow != "stroke_edit":
            problems.append(ItemError("bad override",
                                      "threshold applies to stroke-edit rows (original + edited) only"))
        for name in ("x", "y", "scale", "t0", "seed", "samples", "guidance_scale"):
            out[name].append(_override(name, columns[name][i], problems))
        for name in ("prompt", "negative_prompt"):  # text as given; an empty cell is "none"
            value = columns[name][i]
            out[name].append(None if _missing(value) else str(value))
        label, name = _label(columns["label"][i], classes, problems)
        out["label"].append(label)
        out["label_name"].append(name)
        out["error"].append("; ".join(p.message for p in problems) or None)
        out["error_kind"].append(problems[0].kind if problems else None)
        out["shard"].append(None)  # set by the shard's reader (pipeline.shards)
        out["done"].append(None)  # set for unfinished shards by resume
    return pa.Table.from_pydict(out, schema=MANIFEST_SCHEMA)


def resolved(row: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest row whose URIs are resolved against its manifest (what decoding reads); the row
    itself keeps them as the manifest gave them (what the index records)."""
    base = row.get("manifest")
    return {**row, **{name: resolve_relative(base, row[name]) if base and row.get(name) else row.get(name)
                      for name in URI_COLUMNS}}


def _workflow(given: set[str], problems: list[ItemError]) -> str:
    """Which way the row gives its guide; a row that mixes ways or lacks a part gets a problem."""
    used = [kind for kind, needed in WORKFLOW_COLUMNS.items() if given & {*needed, *_OPTIONAL.get(kind, ())}]
    if not used:
        problems.append(ItemError("missing guide", "the row gives no guide (nor base + overlay, nor original + "
                                  "edited)"))
        return "guide"
    if len(used) > 1:
        parts = " and ".join(", ".join(sorted(given & {*WORKFLOW_COLUMNS[k], *_OPTIONAL.get(k, ())})) for k in used)
        problems.append(ItemError("bad row", f"it gives {parts}; give exactly one of guide, base + overlay, "
                                  "original + edited"))
        return used[0]
    lacking = [c for c in WORKFLOW_COLUMNS[used[0]] if c not in given]
    if lacking:
        needs = " and ".join(WORKFLOW_COLUMNS[used[0]])
        problems.append(ItemError("bad row", f"a {used[0].replace('_', ' ')} needs {needs}; "
                                  f"{', '.join(lacking)} is empty"))
    return used[0]


_INTEGER = ("seed", "samples", "margin", "threshold")


def _embedded_image(value: Any, columns: dict[str, list[Any]], i: int, problems: list[ItemError]) -> bytes | None:
    """A row's ``image`` cell: encoded bytes (returned), or a URI string (moved into its guide cell)."""
    if not isinstance(value, dict | bytes) and _missing(value):
        return None
    data, uri = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (
        (value, None) if isinstance(value, bytes) else (None, str(value)))
    if not data and not uri:
        return None
    if not _missing(columns["guide"][i]):
        problems.append(ItemError("bad row", "it gives both guide and image; give one"))
        return None
    if data:
        return bytes(data)
    columns["guide"][i] = uri
    return None


def _label(value: Any, classes: ClassLabels | None, problems: list[ItemError]) -> tuple[int | None, str | None]:
    """A row's label as the model's class index (and its name), from an index or a class name.

    Empty: unlabelled, which runs the unconditional model (the null label) where the model has one.
    """
    if _missing(value):
        if classes is not None and classes.null_label is None:
            problems.append(ItemError("bad label", "the row has no label and the model has no null label "
                                      "(no unconditional evaluation): give every row a label"))
        return None, None
    if classes is None:
        problems.append(ItemError("bad label", f"label {value!r} given, but the model is not class-conditional"))
        return None, None
    given: int | str = value
    if isinstance(value, float) and value.is_integer():
        given = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit() and not (
            classes.names and value.strip() in classes.names):
        given = int(value.strip())
    elif isinstance(value, str):
        given = value.strip()
    try:
        index = classes.resolve(given)
    except ValueError as e:
        problems.append(ItemError("bad label", str(e)))
        return None, None
    names = classes.names or ()
    return index, names[index] if index < len(names) else None


def _override(name: str, value: Any, problems: list[ItemError]) -> Any:
    """Parse one per-item override against its limit (pipeline.spec.OVERRIDES); a bad one is recorded
    in ``problems`` and dropped. An overlay corner (x, y) is whole pixels (negative clips) or a
    fraction of the base in (0, 1)."""
    number = _number(name, value, int if name in _INTEGER else float, problems, OVERRIDES[name])
    if name in ("x", "y") and number is not None and not number.is_integer() and not 0 < number < 1:
        problems.append(ItemError("bad override", f"{name}={value!r} must be whole pixels or a fraction in (0, 1)"))
        return None
    return number


def _json_record(line: str) -> dict[str, Any]:
    """One JSON Lines row; an unparsable line has no id, which stops the job before any work."""
    try:
        record = json.loads(line)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip()
    )


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value).strip()


def _id_text(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(name: str, value: Any, kind: type, problems: list[ItemError], limit: Any) -> Any:
    """A number within ``limit`` (a :class:`pipeline.spec.Range`), or None with a problem recorded.

    An empty cell (null) means "no override"; an explicit NaN is an error, not a silent default.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value) if kind is float else _to_int(value)
    except (TypeError, ValueError):
        expected = "a number" if kind is float else "an integer"
        problems.append(ItemError("bad override", f"{name}={value!r} is not {expected}"))
        return None
    if not limit.contains(number) or (kind is float and not math.isfinite(number)):
        problems.append(ItemError("bad override", f"{name}={value!r} must be {limit.describe()}"))
        return None
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError("not an integer")
    return int(as_float)


def normalize_ids(ids: pa.Array | pa.ChunkedArray | list[Any]) -> pa.Array:
    """Raw id cells -> the ids the job names items by, as :func:`normalize_batch` does (vectorised for
    string and integer columns): a float ``1.0`` is ``"1"``, an empty or blank cell no id (null)."""
    if isinstance(ids, list):
        return pa.array([_id_text(v) for v in ids], pa.string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], ids.type)
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        ids = ids.cast(pa.string())
        blank = pc.equal(pc.utf8_trim_whitespace(ids), "")
        return pc.if_else(blank, pa.scalar(None, pa.string()), ids)
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.string())
    return pa.array([_id_text(v) for v in ids.to_pylist()], pa.string())


def check_ids(ids: pa.Array | pa.ChunkedArray) -> None:
    """Every output is named after its item id, so ids must be present and unique (all ids at hand)."""
    report_ids(ids.null_count, duplicate_ids(ids))


def duplicate_ids(ids: pa.Array | pa.ChunkedArray, limit: int = 5) -> tuple[list[str], int]:
    """Up to ``limit`` ids that occur more than once, and how many such ids there are."""
    counts = pc.value_counts(ids.drop_null())
    found = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    return found.slice(0, limit).to_pylist(), len(found)


def report_ids(nulls: int, duplicates: tuple[list[str], int]) -> None:
    """Raise :class:`ManifestError` for rows without id or duplicate ids."""
    if nulls:
        raise ManifestError(
            f"input.manifest: {nulls} row(s) have no id (or are not valid JSON); every row needs a unique id"
        )
    shown, total = duplicates
    if total:
        more = f" and {total - len(shown)} more" if total > len(shown) else ""
        raise ManifestError(
            f"input.manifest: duplicate ids {', '.join(repr(d) for d in shown)}{more}; ids must be unique "
            "across manifests"
        )
