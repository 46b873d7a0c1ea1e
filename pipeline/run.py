"""The job: the one place that wires the stages into a Ray Data graph and sets their resources.

read manifests -> repartition -> decode (CPU tasks) -> SDEditor (actor pool, CPU or GPU)
-> write images (CPU tasks) -> write the Parquet index -> summary, job.json, contact sheet.
Everything that can be checked before the cluster does any work is checked first (:func:`preflight`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import ray

from pipeline.actor import ActorSettings, SDEditor
from pipeline.builtin import resolve_model_uri
from pipeline.decode import DecodeSettings, decode_batch
from pipeline.editing import EditSettings, model_label
from pipeline.images import MODES, WorkingSize
from pipeline.jobfile import SpecError
from pipeline.ledger import start_ledger
from pipeline.lock import OutputLock
from pipeline.manifest import ManifestError, manifest_format, missing_columns, peek_columns, read_manifests
from pipeline.outdir import prepare_output, write_dataset_card, write_job_record
from pipeline.redact import redact_text, strip_userinfo
from pipeline.resume import completed_outputs
from pipeline.spec import JobSpec
from pipeline.storage import absolute_uri, url_to_fs
from pipeline.summary import RunSummary, summarize
from pipeline.write import IndexDatasink, WriteSettings, write_batch

log = logging.getLogger("pipeline")

IO_TASK_CPUS = 0.25  # decode and write are light; fractional CPUs keep them schedulable next to actors


@dataclass(frozen=True)
class Plan:
    """What the preflight learned from the model: the working image shape and the model identity."""

    channels: int
    height: int
    width: int
    label: str
    sde: str
    steps: int
    batch_size: int = 8  # resources.batch_size, or the measured one when it says auto
    classes: Any = None  # sdedit_kernel.ClassLabels of a class-conditional model, else None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.classes.names or ()) if self.classes is not None else ()

    def working(self, spec: JobSpec) -> WorkingSize:
        return WorkingSize(self.channels, self.height, self.width, spec.input.fit)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "sde": self.sde, "channels": self.channels,
                "image_size": [self.height, self.width], "steps_at_job_t0": self.steps,
                "batch_size": self.batch_size, **({} if self.classes is None else {"classes": {
                    "num_classes": self.classes.num_classes, "names": list(self.classes.names or []),
                    "null_label": self.classes.null_label}})}


def preflight(spec: JobSpec) -> Plan:
    """Load the model once in the driver and check the spec against it; raises :class:`SpecError`."""
    import torch

    from sdedit_kernel import load_score_model, resolve_steps

    problems: list[tuple[str, str]] = []
    with_label: list[str] = []  # manifests with / without a label column (JSON Lines: checked per row)
    without_label: list[str] = []
    for raw_uri in spec.input.manifests:
        uri = strip_userinfo(raw_uri)  # messages only; a URI may carry user:password
        try:
            fmt = manifest_format(raw_uri, spec.input.format)
            fs, path = url_to_fs(absolute_uri(raw_uri), spec.options_for("input"))
            if not fs.exists(path):
                problems.append(("input.manifest", f"{uri} does not exist"))
                continue
            columns = peek_columns(raw_uri, fmt, spec.options_for("input"))
            if columns == []:
                problems.append(("input.manifest", f"{uri} is empty: no header and no rows"))
                continue
            missing = missing_columns(columns) if columns is not None else []
            if missing:
                problems.append(("input.manifest", f"{uri} lacks column(s) {', '.join(missing)}"))
            if columns is not None and fmt != "jsonl":
                (with_label if "label" in columns else without_label).append(uri)
        except ManifestError as e:
            problems.append(("input.format" if "input.format" in str(e) else "input.manifest",
                             strip_userinfo(_strip(e))))
        except Exception as e:  # noqa: BLE001 - a storage error here means the job cannot run
            reason = f"{type(e).__name__}: {redact_text(str(e))[:300]}"
            problems.append(("input.manifest", f"{uri}: cannot read: {reason}"))
    try:
        model = load_score_model(resolve_model_uri(spec.model.uri), device="cpu", dtype=torch.float32,
                                 storage_options=spec.options_for("model") or None)
    except Exception as e:  # noqa: BLE001 - CheckpointError, missing files, network errors alike
        raise SpecError([*problems, ("model.uri", f"{type(e).__name__}: {redact_text(str(e))}")]) from None
    if model.channels not in MODES:
        problems.append(("model.uri", f"models with {model.channels} channels are not supported (1 or 3)"))
    problems += _label_problems(spec, model, with_label, without_label)
    height, width = _image_size(spec, model.sample_size, problems)
    steps = 0
    try:
        # A sweep is checked at each t0; the plan keeps the steps at the costliest.
        steps = max(resolve_steps(model, t0, spec.sampling.steps, spec.sampling.sampler)
                    for t0 in spec.sampling.t0_values)
    except ValueError as e:
        problems.append(("sampling.steps" if spec.sampling.steps else "sampling.t0", str(e)))
    if problems:
        raise SpecError(problems)
    batch = spec.resources.batch_size
    return Plan(channels=model.channels, height=height, width=width, steps=steps,
                batch_size=batch if isinstance(batch, int) else 0,
                label=model_label(spec.model.uri, model.digest), sde=type(model.sde).__name__,
                classes=model.classes)


def _label_problems(spec: JobSpec, model: Any, with_label: list[str],
                    without_label: list[str]) -> list[tuple[str, str]]:
    """A class-conditional model needs labels it knows (or a null label); an unconditional one takes none."""
    name, guidance = spec.model.uri, spec.sampling.guidance_scale
    found: list[tuple[str, str]] = []
    if model.classes is None:
        if guidance != 1:
            found.append(("sampling.guidance_scale", f"{guidance} needs a class-conditional model; {name} is "
                          "unconditional"))
        found += [("input.manifest", f"{u} has a label column, but {name} is not class-conditional (drop the "
                   "column or use a class-conditional model)") for u in with_label]
    elif model.classes.null_label is None:
        if guidance != 1:
            found.append(("sampling.guidance_scale", f"{guidance} needs the unconditional model, and {name} has "
                          "no null label (labels.json null_label)"))
        found += [("input.manifest", f"{u} has no label column, and {name} has no null label: every row needs "
                   "a label") for u in without_label]
    return found


def _image_size(spec: JobSpec, sample_size: Any, problems: list[tuple[str, str]]) -> tuple[int, int]:
    size = spec.input.image_size if spec.input.image_size is not None else sample_size
    if size is None:
        problems.append(("input.image_size", "the model declares no sample_size; set input.image_size"))
        return 0, 0
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _strip(e: Exception) -> str:
    return str(e).split(": ", 1)[1] if str(e).startswith("input.") else str(e)


def decode_settings(spec: JobSpec, plan: Plan,
                    done: frozenset[tuple[str, float | None, int]] = frozenset()) -> DecodeSettings:
    """The decode stage's settings; ``sdedit tune-t0`` decodes its sample with the same ones."""
    return DecodeSettings(
        working=plan.working(spec), input=spec.input, sampling=spec.sampling, layout=spec.layout,
        storage_options=spec.options_for("input"), done=done,
        out_uri=spec.output.uri, out_options=spec.options_for("output"), conditional=plan.classes is not None,
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
    build_dataset(spec, plan, manifest, done, ledger=start_ledger()).write_datasink(
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
