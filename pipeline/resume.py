"""Resuming in O(shards): finished shards are dropped whole; only unfinished ones are looked into.

A rerun into the same output lists the shard records (``OUT/shards/*.json``): a shard whose record
covers all of its rows is done and never read again (not its rows, not its index, not its images).
A shard without a record (a run was killed inside it), one that has grown since its record (rows
appended to the manifest), or one whose record counts failures a rerun may cure (:func:`retryable`:
a missing or unreadable input, a failed write, a model or process failure) is run again. Its
outputs an earlier run already made, listed in its part files (or its earlier index) as ok and
whose image exists, are carried on the shard's manifest rows (the ``done`` column) so decode skips
exactly them. Nothing else is shipped anywhere.

A resume must make the same outputs the earlier run would have, so the fields that shape an output
(and the shard size, which names shards) must match OUT/job.json, and the model must be the same.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticUndefined

from pipeline.finalize import read_records, rows_so_far
from pipeline.index import INDEX_DIR
from pipeline.naming import IMAGES_DIR, OutputLayout
from pipeline.outdir import LAYOUT, RECORDS_DIR, WORK_DIR, read_job_record
from pipeline.shards import Shard
from pipeline.spec import JobSpec
from pipeline.storage import join_uri, list_names, url_to_fs
from pipeline.write import part_dir

log = logging.getLogger("pipeline")

# Fields that change what an output looks like or where it is; anything else (resources, manifests) may change.
SHAPING_FIELDS = (
    ("sampling", "t0"), ("sampling", "sampler"), ("sampling", "options"), ("sampling", "steps"),
    ("sampling", "passes"), ("sampling", "seed"), ("sampling", "t0_mode"), ("sampling", "guidance_scale"),
    ("model", "uri"), ("model", "dtype"),
    ("input", "fit"), ("input", "image_size"), ("input", "composite_mask"), ("input", "composite_margin"),
    ("input", "edit_threshold"), ("input", "edit_margin"), ("input", "shard_rows"), ("output", "format"),
    ("output", "quality"), ("output", "embed_images"), ("output", "webdataset"),
)


class ResumeError(ValueError):
    """The output folder was made by a job that differs in a field that shapes outputs."""


@dataclass
class WorkPlan:
    """What this run has to do: the shards to run, and what is already done inside them."""

    pending: list[Shard]
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard -> its record (left alone)
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # grown shard -> its earlier record
    done: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # shard -> id -> done keys
    shards: int = 0

    @property
    def done_inside(self) -> int:
        """Outputs already made inside the shards this run runs."""
        return sum(len(keys) for items in self.done.values() for keys in items.values())

    @property
    def resumed_outputs(self) -> int:
        """Outputs already made: those of finished shards, and those inside unfinished ones."""
        return sum(r.get("outputs_ok", 0) for r in self.finished.values()) + self.done_inside


def plan_work(spec: JobSpec, shards: list[Shard], model_label: str) -> WorkPlan:
    """The shards this run runs; with ``output.if_exists: resume``, less what is done (see the module)."""
    if spec.output.if_exists != "resume":
        return WorkPlan(pending=list(shards), shards=len(shards))
    options = spec.options_for("output")
    fs, root = url_to_fs(spec.output.uri, options)
    made = [name for name in (INDEX_DIR, RECORDS_DIR, IMAGES_DIR, WORK_DIR) if list_names(fs, join_uri(root, name))]
    if not made:
        return WorkPlan(pending=list(shards), shards=len(shards))
    try:
        record = read_job_record(spec.output.uri, options)
    except FileNotFoundError:
        raise ResumeError(
            f"output.if_exists: {spec.output.uri} holds {', '.join(made)}/ but no job.json to resume from"
        ) from None
    if record.get("layout") != LAYOUT:
        raise ResumeError(
            f"output.if_exists: {spec.output.uri} was written by an earlier sdedit-pipeline (one flat images/ "
            "folder, no shards); resume it with that version, or use output.if_exists=overwrite or another "
            "output.uri"
        )
    _check_same_job(spec, record)
    before = record.get("model", {}).get("label")
    if before != model_label:
        raise ResumeError(
            f"output.if_exists: cannot resume: the model changed ({before} -> {model_label}); "
            "use output.if_exists=overwrite or another output.uri"
        )
    records = read_records(spec.output.uri, options)
    plan = WorkPlan(pending=[], shards=len(shards))
    shrunk = []
    for shard in shards:
        rec = records.get(shard.name)
        if rec is not None and rec.get("rows", -1) >= shard.rows and not retryable(rec):
            plan.finished[shard.name] = rec
            if rec["rows"] > shard.rows:
                shrunk.append(shard.name)
            continue
        plan.pending.append(shard)
        if rec is not None:
            plan.previous[shard.name] = rec
    if shrunk:
        log.warning("resume: %d shard(s) have fewer manifest rows than when they were finished (%s...); their "
                    "outputs are kept as they are", len(shrunk), shrunk[0])
    started = set(list_names(fs, join_uri(root, WORK_DIR)))
    for name in started & set(plan.finished):  # a finish killed after its record: only the clean-up is left
        fs.rm(join_uri(root, part_dir(name)), recursive=True)
    layout = OutputLayout.of_job(spec.public_dict())
    for shard in plan.pending:
        if shard.name in started or shard.name in plan.previous:
            done = _done_in_shard(fs, root, spec, shard.name, layout, plan.previous.get(shard.name))
            if done:
                plan.done[shard.name] = done
    return plan


def retryable(record: Mapping[str, Any]) -> list[str]:
    """The failure kinds in a finished shard that a rerun may cure (a guide uploaded since, a store
    that failed a read or a write, a model or process failure); its shard is run again for them.
    A bad row, override, label or image stays bad: those shards stay finished."""
    return [kind for kind in record.get("failures_by_reason", {})
            if kind.startswith(("missing ", "unreadable ")) or kind in RETRIED_KINDS]


RETRIED_KINDS = ("decode error", "write error", "model error", "worker crash")


def _done_in_shard(fs: Any, root: str, spec: JobSpec, shard: str, layout: OutputLayout,
                   previous: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """id -> done keys of one unfinished shard: ok rows whose image is there (or, in a grown
    shard's finished index, ok rows: their images are in place or in its tar)."""
    finished, parts = rows_so_far(spec.output.uri, spec.options_for("output"), shard, previous)
    if layout.webdataset:
        present = set(list_names(fs, join_uri(root, part_dir(shard), "images")))
    else:
        present = set(list_names(fs, join_uri(root, IMAGES_DIR, shard)))
        for name in [n for n in present if n.startswith(".") and n.endswith(".tmp")]:  # interrupted writes
            fs.rm(join_uri(root, IMAGES_DIR, shard, name))
    done: dict[str, set[str]] = defaultdict(set)
    tables = ([(True, finished)] if finished is not None else []) + [(False, t) for _, t in parts]
    for trusted, table in tables:
        columns = [table.column(c).to_pylist() for c in ("id", "t0", "sample", "status")]
        for item_id, t0, sample, status in zip(*columns, strict=True):
            if status != "ok" or t0 is None:
                continue
            member = layout.member(item_id, t0, sample) if layout.webdataset else \
                layout.image_path(shard, item_id, t0, sample).rsplit("/", 1)[-1]
            if (trusted and layout.webdataset) or member in present:
                done[item_id].add(layout.done_key(t0, sample))
    return {item_id: sorted(keys) for item_id, keys in done.items()}


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
