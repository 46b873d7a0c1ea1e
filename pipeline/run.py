"""The job: the one place that wires the stages and sets their resources.

plan shards -> drop finished ones (resume) -> read pending shards in blocks -> decode (Ray Data CPU
tasks) -> SDEditor actors (pipeline.pool, CPU or GPU, fed batch by batch by this driver) -> write
images and index parts (Ray CPU tasks) -> finish each shard
as soon as its outputs are written (index file, tar, record) -> summary from the shard records,
job.json, contact sheet. Everything that can be checked before the cluster does any work is checked
first (:func:`preflight`). A small job on one model runs the same stages in this process instead
(``resources.executor``, :mod:`pipeline.local`).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import ray

from pipeline.actor import ActorSettings, SDEditor
from pipeline.decode import DecodeSettings, decode_batch
from pipeline.editing import EditSettings
from pipeline.finalize import FinishSettings, backfill_image_metadata, finish_shard, read_records, remove_empty_work
from pipeline.local import LocalCounter, choose_executor, run_local
from pipeline.lock import OutputLock
from pipeline.outdir import prepare_output, write_dataset_card, write_job_record
from pipeline.pool import IN_FLIGHT, ModelPool, Outstanding, batches
from pipeline.preflight import Plan, preflight
from pipeline.progress import Progress
from pipeline.redact import strip_userinfo
from pipeline.resume import WorkPlan, plan_work
from pipeline.shards import Shard, plan_shards
from pipeline.source import ReadSettings, open_manifest
from pipeline.spec import JobSpec
from pipeline.summary import RunSummary, summarize_records
from pipeline.tracker import start_book
from pipeline.write import WriteSettings, write_batch

log = logging.getLogger("pipeline")

IO_TASK_CPUS = 0.25  # decode and write are light; fractional CPUs keep them schedulable next to actors


def decode_settings(spec: JobSpec, plan: Plan) -> DecodeSettings:
    """The decode stage's settings; ``sdedit tune-t0`` decodes its sample with the same ones."""
    return DecodeSettings(
        working=plan.working(spec), input=spec.input, sampling=spec.sampling, layout=spec.layout,
        storage_options=spec.options_for("input"),
        out_uri=spec.output.uri, out_options=spec.options_for("output"), conditioning=plan.conditioning,
    )


def edit_settings(spec: JobSpec, plan: Plan, **changes: Any) -> EditSettings:
    """What every editor (model actors, the batch-size probe, tune-t0's) is built from; ``changes`` override."""
    settings = EditSettings(
        model=spec.model, sampling=spec.sampling, working=plan.working(spec), device=spec.device,
        threads=spec.resources.threads, storage_options=spec.options_for("model"),
    )
    return replace(settings, **changes)


def write_settings(spec: JobSpec, plan: Plan, run_id: str, tracker: Any = None) -> WriteSettings:
    return WriteSettings(
        output=spec.output, sampling=spec.sampling, working=plan.working(spec), layout=spec.layout,
        storage_options=spec.options_for("output"), label_names=plan.label_names, run_id=run_id, tracker=tracker,
    )


def finish_settings(spec: JobSpec, plan: Plan, run_id: str) -> FinishSettings:
    return FinishSettings(
        out_uri=spec.output.uri, layout=spec.layout, embed_images=spec.output.embed_images,
        rows_per_file=spec.output.rows_per_index_file, run_id=run_id, label_names=plan.label_names,
        options=spec.options_for("output"),
    )


def rows_per_block(spec: JobSpec, plan: Plan) -> int:
    """Manifest rows per block: about one model batch of outputs, so batches stream through the stages."""
    return max(1, math.ceil(plan.batch_size / (spec.sampling.samples * len(spec.sampling.t0_values))))


def decode_dataset(spec: JobSpec, plan: Plan, manifest: ray.data.Dataset) -> ray.data.Dataset:
    """The manifest rows decoded into model rows (CPU tasks); nothing runs until it is consumed."""
    return manifest.map_batches(
        decode_batch, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
        fn_kwargs={"settings": decode_settings(spec, plan)},
    )


def start_pool(spec: JobSpec, plan: Plan, ledger: str | None = None) -> ModelPool:
    """The model actors (pipeline.pool), loading the model from now on.

    ``ledger``: the name of the job's bookkeeping actor (pipeline.tracker.JobBook), their crash ledger."""
    r = spec.resources
    settings = ActorSettings(edit=edit_settings(spec, plan), max_crashes_per_item=r.max_crashes_per_item)
    return ModelPool(SDEditor, settings, min_size=r.actors.min, max_size=r.actors.max, num_cpus=r.num_cpus,
                     num_gpus=r.num_gpus, ledger=ledger, may_grow=lambda n: _room_for(spec, n))


def _room_for(spec: JobSpec, actors: int) -> bool:
    """Whether ``actors`` model actors leave the cluster a CPU share for decode and write tasks. GPU
    actors may always ask: a GPU node brings its own CPUs, and an autoscaler adds one for a pending actor."""
    r = spec.resources
    if r.num_gpus:
        return True
    return actors * r.num_cpus + IO_TASK_CPUS <= ray.cluster_resources().get("CPU", 0.0)


def stream(spec: JobSpec, plan: Plan, manifest: ray.data.Dataset, pool: ModelPool, run_id: str, book: Any = None,
           poll: Callable[[], None] = lambda: None) -> None:
    """decode (Ray Data) -> model actors (``pool``) -> write tasks, batch by batch, until every row is
    written; ``poll`` is called between batches (the shard finisher). Raises what a batch raised."""
    write = ray.remote(write_batch).options(num_cpus=IO_TASK_CPUS)
    settings = ray.put(write_settings(spec, plan, run_id, tracker=book))  # once, not with every task
    writes = Outstanding(limit=max(8, 4 * IN_FLIGHT * spec.resources.actors.max), on_progress=poll)
    for block, lo, hi in batches(decode_dataset(spec, plan, manifest).iter_internal_ref_bundles(), plan.batch_size):
        writes.add(write.remote(pool.submit(block, lo, hi), settings))
    writes.drain()


def ray_address(given: str | None = None) -> str:
    """The Ray cluster a run joins: ``given``, else $RAY_ADDRESS, else "local": a new private instance.
    Never Ray's own default, which joins whatever instance already runs on the machine (and dies with it)."""
    return given or os.environ.get("RAY_ADDRESS") or "local"


def ray_connected() -> bool:
    """Whether this process is connected to Ray (a caller's ray.init, or this run's)."""
    return ray.is_initialized()


def run_job(spec: JobSpec, *, sheet: bool = True, plan: Plan | None = None, address: str | None = None,
            connect: Callable[[], Any] | None = None) -> RunSummary:
    """Run a whole job with the executor ``resources.executor`` resolves to (pipeline.local.choose_executor).

    On Ray: the cluster this process is connected to, else ``connect()`` starts one (default: join
    ``address``, else $RAY_ADDRESS, else a new private local instance). Raises :class:`SpecError`,
    ``ManifestError``, ``OutputExistsError`` or ``OutputLockedError`` (all ValueErrors) before any work
    starts when the job cannot run; per-item failures end up in the index instead. ``plan``:
    :func:`preflight`'s result, when the caller already checked the spec.
    """
    start = time.perf_counter()
    plan = plan if plan is not None else preflight(spec)
    with OutputLock(spec.output.uri, spec.options_for("output")):
        return _run_locked(spec, plan, sheet, start, address, connect)


def _run_locked(spec: JobSpec, plan: Plan, sheet: bool, start: float, address: str | None,
                connect: Callable[[], Any] | None) -> RunSummary:
    """The job, once this run holds the output folder."""
    phases: dict[str, float] = {}  # where the wall time went, in job.json: fixed costs are visible
    mark = [start]

    def done_with(phase: str) -> None:
        now = time.perf_counter()
        phases[phase] = round(now - mark[0], 3)
        mark[0] = now

    done_with("preflight")
    in_options, out_options = spec.options_for("input"), spec.options_for("output")
    shards = plan_shards(spec.input.manifests, spec.input.format, in_options, spec.input.shard_rows)
    done_with("plan_shards")
    prepare_output(spec)
    work = plan_work(spec, shards, plan.label)
    done_with("resume" if spec.output.if_exists == "resume" else "prepare_output")
    expected = _expected_outputs(spec, work)
    executor = choose_executor(spec, expected, ray_connected=ray_connected(), address=address)
    if executor == "ray" and not ray_connected():
        (connect or (lambda: ray.init(address=ray_address(address))))()
        done_with("start_ray")
    if spec.resources.batch_size == "auto":
        plan = replace(plan, batch_size=measure_batch_size(spec, plan, local=executor == "local"))
        done_with("batch_size")
    s, pool = spec.sampling, spec.resources.actors
    log.info(
        "sdedit: %d manifest(s), %d shard(s); model %s (%dx%d, %d channel(s)); %s from t0=%s, %d steps x %d "
        "pass(es), %d sample(s)/item; %s on %s; output %s", len(spec.input.manifests), len(shards),
        plan.label, plan.height, plan.width, plan.channels, s.sampler, s.t0, plan.steps, s.passes, s.samples,
        "in this process (executor local)" if executor == "local" else
        f"{pool.min if pool.min == pool.max else f'{pool.min}-{pool.max}'} actor(s)", spec.device,
        strip_userinfo(spec.output.uri),
    )
    run_id = uuid.uuid4().hex[:12]
    running = {"model": plan.describe(), "executor": executor, "resumed_outputs": work.resumed_outputs,
               "shards": {"total": len(shards), "to_run": len(work.pending)}}
    if executor == "local":
        write_job_record(spec, {"status": "running", **running})
        counter = LocalCounter()
        with _progress(spec, counter, expected):
            run_local(spec, plan, shards, work, run_id, counter)
        done_with("execute")
    else:
        _execute_on_ray(spec, plan, shards, work, run_id, running, expected, done_with)
    records = read_records(spec.output.uri, out_options)  # read once: the summary and the backfill
    summary = summarize_records(spec.output.uri, records, time.perf_counter() - start, run_id)
    done_with("summarize")
    write_job_record(spec, {"status": "finished", "model": plan.describe(), "executor": executor,
                            "summary": summary.as_dict(), "shards": running["shards"], "phases_s": phases})
    if not spec.output.embed_images and not spec.output.webdataset:
        backfill_image_metadata(spec.output.uri, out_options, records)  # shards an older version finished
    write_dataset_card(spec, plan.describe(), summary.as_dict(), run_id)
    log.info("sdedit: phases (s): %s", ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    if sheet and spec.output.sheet_items:
        _write_sheet(spec)
    return summary


def _execute_on_ray(spec: JobSpec, plan: Plan, shards: list[Shard], work: WorkPlan, run_id: str,
                    running: dict[str, Any], expected: int, done_with: Callable[[str], None]) -> None:
    """Read the pending shards, decode (Ray Data) -> model actors -> write, finishing shards as they complete."""
    _warn_if_no_room(spec)
    book_name = f"sdedit-book-{run_id}"
    book = start_book(book_name)  # the shard tracker, and the crash ledger the model actors report to
    pool = start_pool(spec, plan, book_name) if work.pending else None  # the model loads while rows are read
    try:
        manifest = open_manifest(shards, work, ReadSettings(
            sampling=spec.sampling, layout=spec.layout, classes=plan.classes, options=spec.options_for("input"),
            tracker=book), rows_per_block(spec, plan), blocks=max(64, 4 * spec.resources.actors.max))
        done_with("read_manifests")
        write_job_record(spec, {"status": "running", **running})
        finisher = _Finisher(spec, plan, work, run_id, book)
        if manifest is not None and pool is not None:
            def ask() -> tuple[int, int]:
                return ray.get(book.progress.remote(), timeout=10)

            with _progress(spec, ask, expected):
                stream(spec, plan, manifest, pool, run_id, book, poll=finisher.poll)
    finally:
        if pool is not None:
            pool.shutdown()
    done_with("execute")
    finisher.finish_all()
    done_with("finish_shards")


def _progress(spec: JobSpec, ask: Callable[[], tuple[int, int]], expected: int) -> Any:
    if not spec.output.progress:
        return nullcontext()
    return Progress(ask, expected, every_s=spec.output.progress_every_s)


class _Finisher:
    """Finishes shards (pipeline.finalize) as the tracker reports them complete, then the rest at the end."""

    POLL_S = 1.0

    def __init__(self, spec: JobSpec, plan: Plan, work: WorkPlan, run_id: str, tracker: Any) -> None:
        self.work, self.tracker = work, tracker
        self.pending: dict[str, Shard] = {s.name: s for s in work.pending}
        self.settings = finish_settings(spec, plan, run_id)
        self.task = ray.remote(finish_shard).options(num_cpus=IO_TASK_CPUS, max_retries=3, retry_exceptions=True)
        self.running: list[Any] = []
        self.last = time.monotonic()

    def poll(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < self.POLL_S:
            return
        self.last = time.monotonic()
        try:
            ready = ray.get(self.tracker.take_ready.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a lost tracker: every shard is finished at the end
            return
        for name in ready:
            self._start(name)

    def _start(self, name: str) -> None:
        shard = self.pending.pop(name, None)
        if shard is None:
            return
        item = {**shard.as_item(), "uri": strip_userinfo(shard.uri)}
        self.running.append(self.task.remote(item, self.settings, self.work.previous.get(name)))

    def finish_all(self) -> None:
        """Every shard of the run is complete once the execution ended: finish those not yet finished."""
        self.poll(force=True)
        for name in list(self.pending):
            self._start(name)
        ray.get(self.running)
        remove_empty_work(self.settings.out_uri, self.settings.options)


def _expected_outputs(spec: JobSpec, work: WorkPlan) -> int | None:
    """About how many outputs this run makes: pending rows x outputs per item, less the resumed ones."""
    per_item = spec.sampling.samples * (len(spec.sampling.t0_values) if spec.sampling.sweep else 1)
    return max(0, sum(s.rows for s in work.pending) * per_item - work.done_inside)


def measure_batch_size(spec: JobSpec, plan: Plan, local: bool = False) -> int:
    """resources.batch_size: auto, measured by one task with an actor's resources (its GPU, its threads),
    or in this process for the local executor."""
    from pipeline.editing import probe_batch_size

    if local:
        chosen = probe_batch_size(edit_settings(spec, plan))
    else:
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
