"""Resuming: the index is the truth; a rerun into the same output produces only what is missing.

An output counts as done when the index lists it as ok and its image file exists. Before the rerun
the index is compacted to exactly those rows (a new file is written first, then the old files are
deleted, so a crash in between leaves duplicates of identical rows, never a loss), which also drops
the error rows of the earlier run: their outputs are retried. A resume must make the same outputs
the earlier run would have, so the fields that shape an output must match OUT/job.json.

What a crash can leave behind is handled here too: an image without an index row is not done (it
is made again, with the same bytes: its seed depends only on (seed, id, sample)); an index file
that cannot be read (a truncated one written by an older version, or a foreign file) is dropped
with a warning and its outputs are made again; temporary files of interrupted writes are deleted.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic_core import PydanticUndefined

from pipeline.index import INDEX_DIR, conform
from pipeline.naming import OutputLayout
from pipeline.outdir import IMAGES_DIR, read_job_record
from pipeline.spec import JobSpec
from pipeline.storage import join_uri, url_to_fs

log = logging.getLogger("pipeline")

# Fields that change what an output looks like; anything else (resources, manifests) may change.
SHAPING_FIELDS = (
    ("sampling", "t0"), ("sampling", "sampler"), ("sampling", "options"), ("sampling", "steps"),
    ("sampling", "passes"), ("sampling", "seed"), ("sampling", "t0_mode"), ("sampling", "guidance_scale"),
    ("model", "uri"), ("model", "dtype"),
    ("input", "fit"), ("input", "image_size"), ("input", "composite_mask"), ("input", "composite_margin"),
    ("input", "edit_threshold"), ("input", "edit_margin"), ("output", "format"), ("output", "quality"),
    ("output", "embed_images"),
)


class ResumeError(ValueError):
    """The output folder was made by a job that differs in a field that shapes outputs."""


def completed_outputs(spec: JobSpec, model_label: str) -> frozenset[tuple[str, float | None, int]]:
    """Every output done in ``output.uri`` as :meth:`pipeline.naming.OutputLayout.key`; compacts the index.

    ``model_label`` (name and weights digest) must match the earlier run's: same name, other weights
    (a checkpoint saved again) would make other outputs.
    """
    options = spec.options_for("output")
    fs, root = url_to_fs(spec.output.uri, options)
    index_dir = join_uri(root, INDEX_DIR)
    found = fs.find(index_dir) if fs.exists(index_dir) else []
    files = [f for f in found if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith((".", "_"))]
    if not files:
        return frozenset()
    try:
        record = read_job_record(spec.output.uri, options)
    except FileNotFoundError:
        raise ResumeError(
            f"output.if_exists: {spec.output.uri} has an index but no job.json to resume from"
        ) from None
    _check_same_job(spec, record)
    before = record.get("model", {}).get("label")
    if before != model_label:
        raise ResumeError(
            f"output.if_exists: cannot resume: the model changed ({before} -> {model_label}); "
            "use output.if_exists=overwrite or another output.uri"
        )
    images = {p[len(root.rstrip("/")) + 1:] for p in fs.find(join_uri(root, IMAGES_DIR))}
    _remove_temporaries(fs, [*images, *(f[len(root.rstrip("/")) + 1:] for f in found)], root)
    layout = OutputLayout.of_job(spec.public_dict())
    done: set[tuple[str, float | None, int]] = set()
    for n, old in enumerate(files):  # one file at a time: embedded images may make the index large
        try:
            with fs.open(old, "rb") as f:
                table = pq.read_table(f)
            table.select(["id", "sample", "t0", "status"])
        except Exception as e:  # noqa: BLE001 - unreadable: its outputs are simply made again
            log.warning("resume: index file %s is unreadable (%s); its outputs will be made again",
                        old.rsplit("/", 1)[-1], type(e).__name__)
            continue
        keep = []
        for i, (item_id, sample, t0, status) in enumerate(zip(
            table.column("id").to_pylist(), table.column("sample").to_pylist(),
            table.column("t0").to_pylist(), table.column("status").to_pylist(), strict=True,
        )):
            if status != "ok" or t0 is None:
                continue
            key = layout.key(item_id, t0, sample)
            if layout.image_path(item_id, t0, sample) in images and key not in done:
                done.add(key)
                keep.append(i)
        if keep:
            with fs.open(join_uri(index_dir, f"resumed-{uuid.uuid4().hex[:12]}-{n:05d}.parquet"), "wb") as f:
                names = record.get("model", {}).get("classes", {}).get("names") or ()
                pq.write_table(conform(table.take(pa.array(keep, pa.int64())), spec.output.embed_images, names), f)
    for old in files:  # only once every kept row is safely in a new file
        fs.rm(old)
    return frozenset(done)


def _remove_temporaries(fs: Any, relpaths: list[str], root: str) -> None:
    """Delete the hidden ``.<name>.<hex>.tmp`` files of writes a crash interrupted (never published)."""
    for rel in relpaths:
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(".tmp"):
            fs.rm(join_uri(root, rel))


def _check_same_job(spec: JobSpec, record: Mapping[str, Any]) -> None:
    before, now = _with_defaults(spec, record.get("spec", {})), spec.public_dict()
    changed = [
        f"{section}.{name}: {before.get(section, {}).get(name)!r} -> {now[section][name]!r}"
        for section, name in SHAPING_FIELDS
        if _norm(before.get(section, {}).get(name)) != _norm(now[section][name])
    ]
    if changed:
        raise ResumeError(
            "output.if_exists: cannot resume into an output made with other settings ("
            + "; ".join(changed) + "); use output.if_exists=overwrite or another output.uri"
        )


def _with_defaults(spec: JobSpec, before: Mapping[str, Any]) -> dict[str, Any]:
    """The earlier run's spec, where a field added since (e.g. input.edit_margin) has its default
    (renamed fields already carry their new names: read_job_record)."""
    out = dict(before)
    for section in {section for section, _ in SHAPING_FIELDS}:
        fields = type(getattr(spec, section)).model_fields
        defaults = {name: f.default for name, f in fields.items() if f.default is not PydanticUndefined}
        if isinstance(before.get(section), dict):
            out[section] = {**defaults, **before[section]}
    return out


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
