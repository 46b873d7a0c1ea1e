"""Preflight: everything about a job that can be checked before the cluster does any work.

The manifests' headers (present, readable, the columns a way of giving guides needs), the model
(loaded in the driver when it is a small pixel model; only its configs read for a latent one, whose
weights stay on disk until an actor loads them), and the spec against the model: channels, working
size, steps at every t0, labels and prompts the model can take. Every problem is collected, so one
run of ``sdedit validate`` lists them all, each naming its field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.builtin import model_name, resolve_model_uri
from pipeline.editing import model_label
from pipeline.images import MODES, WorkingSize
from pipeline.jobfile import SpecError
from pipeline.manifest import ManifestError, manifest_format, missing_columns, peek_columns
from pipeline.redact import redact_text, strip_userinfo
from pipeline.spec import JobSpec
from pipeline.storage import absolute_uri, url_to_fs


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
    conditioning: str | None = None  # "class", "text" or None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.classes.names or ()) if self.classes is not None else ()

    def working(self, spec: JobSpec) -> WorkingSize:
        return WorkingSize(self.channels, self.height, self.width, spec.input.fit)

    def describe(self) -> dict[str, Any]:  # what job.json records of the model
        return {"label": self.label, "sde": self.sde, "channels": self.channels,
                "image_size": [self.height, self.width], "steps_at_job_t0": self.steps,
                "batch_size": self.batch_size, "conditioning": self.conditioning,
                **({} if self.classes is None else {"classes": {
                    "num_classes": self.classes.num_classes, "names": list(self.classes.names or []),
                    "null_label": self.classes.null_label}})}


def preflight(spec: JobSpec) -> Plan:
    """Check the manifests, the model and the spec against it; raises :class:`SpecError`."""
    from sdedit_kernel import resolve_steps

    problems: list[tuple[str, str]] = []
    with_label: list[str] = []  # manifests with / without a label column (JSON Lines: checked per row)
    without_label: list[str] = []
    with_prompt: list[str] = []  # manifests with a prompt or negative_prompt column
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
                if {"prompt", "negative_prompt"} & set(columns):
                    with_prompt.append(uri)
        except ManifestError as e:
            problems.append(("input.format" if "input.format" in str(e) else "input.manifest",
                             strip_userinfo(_strip(e))))
        except Exception as e:  # noqa: BLE001 - a storage error here means the job cannot run
            reason = f"{type(e).__name__}: {redact_text(str(e))[:300]}"
            problems.append(("input.manifest", f"{uri}: cannot read: {reason}"))
    try:
        model = _model_facts(spec)
    except Exception as e:  # noqa: BLE001 - CheckpointError, missing files, network errors alike
        raise SpecError([*problems, ("model.uri", f"{type(e).__name__}: {redact_text(str(e))}")]) from None
    if model.channels not in MODES:
        problems.append(("model.uri", f"models with {model.channels} channels are not supported (1 or 3)"))
    problems += _label_problems(spec, model, with_label, without_label)
    problems += _prompt_problems(spec, model, with_label, with_prompt)
    height, width = _image_size(spec, model.sample_size, problems)
    factor = model.vae_scale_factor or 1
    if height % factor or width % factor:
        problems.append(("input.image_size", f"{height}x{width}: a latent model's working size must be a "
                         f"multiple of its autoencoder's factor {factor}"))
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
                batch_size=batch if isinstance(batch, int) else 0, label=model.label, sde=model.sde_name,
                classes=model.classes, conditioning=model.conditioning)


@dataclass(frozen=True)
class _ModelFacts:
    """What preflight needs of a model, from the loaded model (pixel) or its configs alone (latent)."""

    channels: int
    sample_size: Any
    label: str
    sde_name: str
    sde: Any  # has default_steps(t0) and num_train_timesteps: what resolve_steps asks
    classes: Any = None
    conditioning: str | None = None
    vae_scale_factor: int | None = None


def _model_facts(spec: JobSpec) -> _ModelFacts:
    """A latent model's weights never reach the driver: its configs say its shapes, and its label carries a
    fingerprint of its weight files (sizes and versions, nothing read); the actors record the content digest.
    A pixel model is small: it is loaded as before, and its label carries its weights' digest."""
    import torch

    from sdedit_kernel import load_score_model, read_model_config

    uri, options = resolve_model_uri(spec.model.uri), spec.options_for("model") or None
    config = read_model_config(uri, options)
    if config.latent:
        from sdedit_kernel.cache import cache_key
        from sdedit_kernel.store import Store

        key = cache_key(Store(uri, options), config.weights)[:16]
        return _ModelFacts(config.channels, config.sample_size, f"{model_name(spec.model.uri)}@files:{key}",
                           config.sde, _Schedule(config.num_train_timesteps), config.classes, config.conditioning,
                           config.vae_scale_factor)
    model = load_score_model(uri, device="cpu", dtype=torch.float32, storage_options=options)
    return _ModelFacts(model.channels, model.sample_size, model_label(spec.model.uri, model.digest),
                       type(model.sde).__name__, model.sde, model.classes, model.conditioning)


@dataclass(frozen=True)
class _Schedule:
    """The step count rule of a discrete schedule, for resolve_steps without the model."""

    num_train_timesteps: int

    def default_steps(self, t0: float) -> int:
        return int(round(t0 * self.num_train_timesteps))


def _prompt_problems(spec: JobSpec, model: Any, with_label: list[str],
                     with_prompt: list[str]) -> list[tuple[str, str]]:
    """Prompts go to text-conditional models only, and labels never do."""
    name, s = spec.model.uri, spec.sampling
    if model.conditioning == "text":
        return [("input.manifest", f"{u} has a label column, but {name} is text-conditional: give a prompt "
                 "column instead") for u in with_label]
    found = [(f"sampling.{field}", f"needs a text-conditional model; {name} is not")
             for field in ("prompt", "negative_prompt") if getattr(s, field) is not None]
    return found + [("input.manifest", f"{u} has a prompt column, but {name} is not text-conditional")
                    for u in with_prompt]


def _label_problems(spec: JobSpec, model: Any, with_label: list[str],
                    without_label: list[str]) -> list[tuple[str, str]]:
    """A class-conditional model needs labels it knows (or a null label); an unconditional one takes none."""
    name, guidance = spec.model.uri, spec.sampling.guidance_scale
    found: list[tuple[str, str]] = []
    if model.conditioning == "text":
        return found  # prompts instead: _prompt_problems
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


