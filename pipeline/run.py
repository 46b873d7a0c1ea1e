"""The job: the one place that wires the stages into a Ray Data graph and sets their resources.

read manifests -> repartition -> decode (CPU tasks) -> SDEditor (actor pool, CPU or GPU)
-> write images (CPU tasks) -> write the Parquet index -> summary, job.json, contact sheet.
Everything that can be checked before the cluster does any work is checked first (:func:`preflight`).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import ray

from pipeline.actor import ActorSettings, SDEditor
from pipeline.decode import DecodeSettings, decode_batch
from pipeline.editing import EditSettings
from pipeline.ledger import start_ledger
from pipeline.lock import OutputLock
from pipeline.manifest import read_manifests
from pipeline.outdir import prepare_output, write_dataset_card, write_job_record
from pipeline.preflight import Plan, preflight
from pipeline.progress import Progress
from pipeline.redact import strip_userinfo
from pipeline.resume import completed_outputs
from pipeline.spec import JobSpec
from pipeline.summary import RunSummary, summarize
from pipeline.write import IndexDatasink, WriteSettings, write_batch

log = logging.getLogger("pipeline")

IO_TASK_CPUS = 0.25  # decode and write are light; fractional CPUs keep them schedulable next to actors


def decode_settings(spec: JobSpec, plan: Plan,
                    done: frozenset[tuple[str, float | None, int]] = frozenset()) -> DecodeSettings:
    """The decode stage's settings; ``sdedit tune-t0`` decodes its sample with the same ones."""
    return DecodeSettings(
        working=plan.working(spec), input=spec.input, sampling=spec.sampling, layout=spec.layout,
        storage_options=spec.options_for("input"), done=done,
        out_uri=spec.output.uri, out_options=spec.options_for("output"), conditioning=plan.conditioning,
    )


def edit_settings(spec: JobSpec, plan: Plan, **changes: Any) -> EditSettings:
    """What every editor (model actors, the batch-size probe, tune-t0's) is built from; ``changes`` override."""
    settings = EditSettings(
        model=spec.model, sampling=spec.sampling, working=plan.working(spec), device=spec.device,
        threads=spec.resources.threads, storage_options=spec.options_for("model"),
    )
    return replace(settings, **changes)


def build_dataset(spec: JobSpec, plan: Plan, manifest: ray.data.Dataset,
                  done: frozenset[tuple[str, float | None, int]] = frozenset(), ledger: Any = None,
                  ) -> ray.data.Dataset:
    """Wire decode -> model -> write on the manifest rows; nothing runs until it is consumed."""
    sampling, resources = spec.sampling, spec.resources
    # Small manifests arrive as one block: split so every actor gets work and batches stream.
    outputs_per_item = sampling.samples * len(sampling.t0_values)
    rows_per_block = max(1, math.ceil(plan.batch_size / outputs_per_item))
    ds = manifest.repartition(target_num_rows_per_block=rows_per_block, strict=True)
    ds = ds.map_batches(
        decode_batch, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
        fn_kwargs={"settings": decode_settings(spec, plan, done)},
    )
    pool = resources.actors
    ds = ds.map_batches(
        SDEditor, batch_size=plan.batch_size, batch_format="pyarrow", udf_modifying_row_count=False,
        compute=ray.data.ActorPoolStrategy(min_size=pool.min, max_size=pool.max),
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus or None,
        fn_constructor_kwargs={"settings": ActorSettings(
            edit=edit_settings(spec, plan), max_crashes_per_item=resources.max_crashes_per_item, ledger=ledger,
        )},
    )
    return ds.map_batches(
        write_batch, batch_format="pyarrow", num_cpus=IO_TASK_CPUS, udf_modifying_row_count=False,
        fn_kwargs={"settings": WriteSettings(
            output=spec.output, sampling=sampling, working=plan.working(spec), layout=spec.layout,
            storage_options=spec.options_for("output"), label_names=plan.label_names,
        )},
    )


def run_job(spec: JobSpec, *, sheet: bool = True, plan: Plan | None = None) -> RunSummary:
    """Run a whole job on the current Ray cluster (a local one starts if none is connected).

    Raises :class:`SpecError`, ``ManifestError``, ``OutputExistsError`` or ``OutputLockedError`` (all
    ValueErrors) before any work starts when the job cannot run; per-item failures end up in the
    index instead. ``plan``: :func:`preflight`'s result, when the caller already checked the spec.
    """
    start = time.perf_counter()
    plan = plan if plan is not None else preflight(spec)
    with OutputLock(spec.output.uri, spec.options_for("output")):
        return _run_locked(spec, plan, sheet, start)


def _run_locked(spec: JobSpec, plan: Plan, sheet: bool, start: float) -> RunSummary:
    """The job, once this run holds the output folder."""
    phases: dict[str, float] = {}  # where the wall time went, in job.json: fixed costs are visible
    mark = [start]

    def done_with(phase: str) -> None:
        now = time.perf_counter()
        phases[phase] = round(now - mark[0], 3)
        mark[0] = now

    if spec.resources.batch_size == "auto":
        plan = replace(plan, batch_size=measure_batch_size(spec, plan))
    done_with("preflight")
    manifest = read_manifests(spec.input.manifests, spec.input.format, spec.options_for("input"), plan.classes)
    _warn_if_no_room(spec)
    s, pool = spec.sampling, spec.resources.actors
    log.info(
        # No manifest.count() here: it would read every manifest once more before the work starts
        # (seconds on a big manifest, and the measured fixed cost of small jobs); the summary counts.
        "sdedit: %d manifest(s); model %s (%dx%d, %d channel(s)); %s from t0=%s, %d steps x %d "
        "pass(es), %d sample(s)/item; %s actor(s) on %s; output %s", len(spec.input.manifests),
        plan.label, plan.height, plan.width, plan.channels, s.sampler, s.t0, plan.steps, s.passes,
        s.samples, pool.min if pool.min == pool.max else f"{pool.min}-{pool.max}", spec.device,
        strip_userinfo(spec.output.uri),
    )
    done_with("read_manifests")
    prepare_output(spec)
    done = completed_outputs(spec, plan.label) if spec.output.if_exists == "resume" else frozenset()
    write_job_record(spec, {"status": "running", "model": plan.describe(), "resumed_outputs": len(done)})
    out_options = spec.options_for("output")
    sink = IndexDatasink(spec.output.uri, out_options, spec.output.embed_images, spec.output.rows_per_index_file,
                         plan.label_names)
    done_with("prepare_output")
    ledger = start_ledger()
    def ask() -> tuple[int, int]:
        return ray.get(ledger.progress.remote(), timeout=10)

    reporter = (Progress(ask, _expected_outputs(spec, manifest, len(done)), every_s=spec.output.progress_every_s)
                if spec.output.progress else nullcontext())
    with reporter:
        build_dataset(spec, plan, manifest, done, ledger=ledger).write_datasink(
            sink, ray_remote_args={"num_cpus": IO_TASK_CPUS},  # light, and fuses with the write_batch tasks
        )
    done_with("execute")
    summary = summarize(spec.output.uri, out_options, time.perf_counter() - start, spec.layout, done)
    done_with("summarize")
    write_job_record(spec, {"status": "finished", "model": plan.describe(), "summary": summary.as_dict(),
                            "phases_s": phases})
    write_dataset_card(spec, plan.describe(), summary.as_dict())
    log.info("sdedit: phases (s): %s", ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    if sheet and spec.output.sheet_items:
        _write_sheet(spec)
    return summary


def _expected_outputs(spec: JobSpec, manifest: ray.data.Dataset, resumed: int) -> int | None:
    """About how many outputs this run makes: rows x outputs per item, less the resumed ones. The
    manifest is materialised, so its row count is metadata, not another pass."""
    try:
        rows = manifest.count()
    except Exception:  # noqa: BLE001 - the progress line then shows no total
        return None
    per_item = spec.sampling.samples * (len(spec.sampling.t0_values) if spec.sampling.sweep else 1)
    return max(0, rows * per_item - resumed)


def measure_batch_size(spec: JobSpec, plan: Plan) -> int:
    """resources.batch_size: auto, measured by one task with an actor's resources (its GPU, its threads)."""
    from pipeline.editing import probe_batch_size

    r = spec.resources
    task = ray.remote(probe_batch_size).options(num_cpus=r.num_cpus, num_gpus=r.num_gpus or None)
    chosen = int(ray.get(task.remote(edit_settings(spec, plan))))
    log.info("resources.batch_size: auto -> %d (measured on %s)", chosen, spec.device)
    return chosen


def _write_sheet(spec: JobSpec) -> None:
    from pipeline.sheet import make_sheet

    try:
        make_sheet(spec.output.uri, out_options=spec.options_for("output"),
                   input_options=spec.options_for("input"), items=spec.output.sheet_items)
        if spec.sampling.sweep:
            from pipeline.sweep import write_sweep_views

            write_sweep_views(spec.output.uri, out_options=spec.options_for("output"),
                              input_options=spec.options_for("input"), items=min(spec.output.sheet_items, 8))
    except Exception as e:  # noqa: BLE001 - the sheet is a convenience; the outputs are already written
        log.warning("contact sheet not written: %s: %s", type(e).__name__, e)


def _warn_if_no_room(spec: JobSpec) -> None:
    """Actors that take every CPU leave none for decode and write tasks: the job would stall."""
    cpus = ray.cluster_resources().get("CPU", 0.0)
    needed = spec.resources.actors.min * spec.resources.num_cpus
    if cpus and needed + IO_TASK_CPUS > cpus:
        log.warning(
            "resources: %s actor(s) x %s CPU leave no CPU for decode/write tasks on a %s-CPU cluster; "
            "lower resources.num_cpus or resources.actors", spec.resources.actors.min,
            spec.resources.num_cpus, cpus,
        )
