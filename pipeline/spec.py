"""Job spec: the one typed object that says what a job does, validated before any work starts.

Pydantic v2 models, ``extra="forbid"`` and frozen: a misspelt field or a wrong value fails at load time
with its dotted name (``sampling.t0``), and nothing downstream can change the spec. The dotted names
are a contract that users' job files and ``--set`` rely on; docs/pipeline.md lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.builtin import describe_unknown
from pipeline.naming import OutputLayout
from pipeline.redact import redact, strip_userinfo

# The default sampler lives here and nowhere else. Chosen by the quality study (docs/quality_samplers.md):
# SDE-DPM-Solver++(2M) matched the official 500-call ancestral sampler's KID and L2 within their
# standard error at 10 calls, the fewest of any sampler (ancestral needed 25; the ODE samplers never did).
DEFAULT_SAMPLER = "dpmpp_2m_sde"

StorageOptions = dict[str, Any]


@dataclass(frozen=True)
class Range:
    """An allowed range of numbers, declared once: the spec's fields and the manifest's per-item
    overrides of them check the same bounds and say them in the same words."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    hi_text: str | None = None  # how hi is written in messages (2**63)
    text: str | None = None  # the whole rule in words, where the interval says it badly

    def contains(self, v: float) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return bool(above and below)  # NaN is in no range

    def describe(self) -> str:
        if self.text:
            return self.text
        hi = self.hi_text or f"{self.hi:g}"
        if not (self.lo_open or self.hi_open):
            return f"between {self.lo:g} and {hi}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {hi}{')' if self.hi_open else ']'}"

    def bounds(self) -> dict[str, float]:
        """pydantic Field bounds."""
        return {"gt" if self.lo_open else "ge": self.lo, "lt" if self.hi_open else "le": self.hi}


# Limits shared by job fields and the manifest columns that override them per item.
T0 = Range(0, 1, lo_open=True)
SEED = Range(0, 2**63, hi_open=True, hi_text="2**63")
SAMPLES = Range(1, 10_000)
MARGIN = Range(0, 1024)
THRESHOLD = Range(0, 254)
SCALE = Range(0, 64, lo_open=True)
POSITION = Range(-(2**31), 2**31, lo_open=True, hi_open=True, text="a pixel position below 2**31")
MAX_PIXELS = Range(1, 178_956_970)
GUIDANCE = Range(0, 100)
OVERRIDES = {"t0": T0, "seed": SEED, "samples": SAMPLES, "margin": MARGIN, "threshold": THRESHOLD,
             "scale": SCALE, "x": POSITION, "y": POSITION, "guidance_scale": GUIDANCE}
# Fields renamed since: job files and job.json records may still use the old name.
RENAMED = {("input", "resize"): "fit", ("sampling", "samples_per_item"): "samples"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Section):
    """Where the guides come from and how they are fitted to the model's size."""

    manifest: str | list[str] = Field(
        description="Manifest URI, or a list of them (required). Rows: id, guide (or base + overlay, or "
        "original + edited: docs/workflows.md), optional mask, "
        "optional per-item t0 / seed / samples. Relative guide and mask URIs resolve against "
        "the manifest's own folder."
    )
    format: Literal["auto", "parquet", "csv", "jsonl"] = Field(
        "auto", description="Manifest format; auto: from the extension (.parquet, .csv, .jsonl/.json)."
    )
    storage_options: StorageOptions | None = Field(
        None, description="fsspec options for manifests, guides and masks; merged over the top-level ones."
    )
    shard_rows: int = Field(
        10_000, ge=1, le=10_000_000, description="Manifest rows per shard, the unit of work, output and resume: "
        "shard k of a manifest file is its rows [k*shard_rows, (k+1)*shard_rows) (docs/scaling.md). Outputs go "
        "under images/<shard>/, each finished shard has its index file and its record; a rerun skips finished "
        "shards whole. Appending rows or files to a manifest keeps the earlier shards.",
    )
    fit: Literal["resize", "center_crop", "pad"] = Field(
        "resize", validation_alias=AliasChoices("fit", "resize"),
        description="(Formerly input.resize.) How a guide of another size is fitted: resize (stretch), "
        "center_crop (scale the short side, crop) or pad (scale the long side, pad with black). Masks follow "
        "with nearest-neighbour.",
    )
    image_size: int | tuple[int, int] | None = Field(
        None, description="Working size, int or [height, width]; default: the model's sample size."
    )
    max_pixels: int = Field(
        50_000_000, **MAX_PIXELS.bounds(),
        description="Largest guide or mask (width x height) decoded; checked from the file header, so a "
        "decompression bomb never reaches memory. Larger images become error rows (bad guide / bad mask).",
    )
    # Composite and stroke-edit rows (docs/workflows.md): margins are in working pixels (the size the
    # sampler sees), since a margin exists to let the sampler blend a seam it can see.
    composite_mask: Literal["overlay", "whole"] = Field(
        "overlay", description="Edit mask of composite rows (base + overlay): overlay (the pasted pixels, "
        "grown by input.composite_margin) or whole (regenerate the whole image). A row's mask wins.",
    )
    composite_margin: int = Field(
        2, **MARGIN.bounds(), description="Pixels (at the working size) the pasted region grows by in every "
        "direction (a square dilation), so the seam around the overlay is regenerated too; manifest column "
        "margin overrides.",
    )
    edit_threshold: int = Field(
        24, **THRESHOLD.bounds(), description="Stroke-edit rows (original + edited): a pixel is edited where some "
        "channel of the two images differs by more than this (0..255 scale, in the model's channels); "
        "manifest column threshold overrides.",
    )
    edit_margin: int = Field(
        2, **MARGIN.bounds(), description="Pixels (at the working size) the stroke-edit mask grows by in every "
        "direction (a square dilation); manifest column margin overrides.",
    )

    @field_validator("manifest")
    @classmethod
    def _manifest_not_empty(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if not items or any(not s.strip() for s in items):
            raise ValueError("give at least one non-empty manifest URI")
        return v

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sizes = [] if v is None else [v] if isinstance(v, int) else list(v)
        if any(s < 1 or s > 16384 for s in sizes):
            raise ValueError("sizes must be between 1 and 16384 pixels")
        return v

    @property
    def manifests(self) -> list[str]:
        return [self.manifest] if isinstance(self.manifest, str) else list(self.manifest)


class OutputSpec(_Section):
    """Where and how results are written."""

    uri: str = Field(description="Output folder URI (required): OUT/images/<shard>/, OUT/index/, OUT/shards/, "
                     "OUT/job.json.")
    format: Literal["png", "jpeg", "webp"] = Field("png", description="Image file format.")
    quality: int = Field(95, ge=1, le=100, description="JPEG / WebP quality (ignored for PNG).")
    embed_images: bool = Field(
        False,
        description="Also store the encoded image in the index: the `image` column becomes "
        "struct{bytes, path} (the Hugging Face datasets Image layout).",
    )
    storage_options: StorageOptions | None = Field(
        None, description="fsspec options for the output; merged over the top-level ones."
    )
    if_exists: Literal["error", "overwrite", "resume"] = Field(
        "error",
        description="When OUT already holds outputs: error (refuse, touch nothing), overwrite (delete "
        "OUT/images, OUT/index, OUT/shards, OUT/webdataset, OUT/job.json, OUT/sheet.png first) or resume (skip "
        "finished shards whole, inside the others keep the outputs already made, produce only the rest; the "
        "fields that shape outputs must match job.json).",
    )
    rows_per_index_file: int = Field(
        100_000, ge=1, description="Most index rows per Parquet file: a finished shard's index is one file "
        "(index/<shard>.parquet), split into <shard>.1.parquet, ... beyond this many rows.",
    )
    webdataset: bool = Field(
        False, description="Pack each shard's outputs into a WebDataset tar, OUT/webdataset/<shard>.tar (per "
        "output its image and <key>.json, the index row), instead of files under OUT/images/; the Parquet "
        "index is written as well (docs/scaling.md).",
    )
    progress: bool = Field(
        True, description="Print a progress line while the job runs (outputs done of about how many, failures, "
        "rate, time left): redrawn in place on a terminal, every output.progress_every_s seconds otherwise.",
    )
    progress_every_s: float = Field(
        30.0, gt=0, description="Seconds between progress lines when the console is not a terminal (cron, CI).",
    )
    sheet_items: int = Field(
        16, ge=0, le=256, description="Items on the contact sheet OUT/sheet.png; 0 writes no sheet."
    )


class ModelSpec(_Section):
    """The score model."""

    uri: str = Field(
        description="Bundled model name (e.g. fashion-mnist-ddpm) or a diffusers UNet2DModel checkpoint "
        "folder URI (required)."
    )
    device: str = Field(
        "auto", description="auto (cuda when resources.num_gpus > 0, else cpu), cpu, cuda or mps."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Weights and compute dtype."
    )
    autocast: Literal["none", "bfloat16", "float16"] = Field(
        "none",
        description="Run the network under torch.autocast in this dtype (float32 weights); the SDE schedule, "
        "sampler updates and noise stay float32. bfloat16 pays on GPUs with bf16 matrix units.",
    )
    channels_last: bool = Field(
        False, description="Keep weights and inputs in channels-last memory (faster convolutions on GPUs)."
    )
    cudnn_benchmark: bool = Field(
        False, description="On CUDA, let cuDNN time its convolution algorithms once per shape and keep the "
        "fastest (shapes repeat for every call of a batch)."
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "off",
        description="torch.compile mode for the network (off by default: it costs minutes of compilation "
        "per actor and pays on long GPU jobs; reduce-overhead adds CUDA graphs). See docs/performance.md.",
    )
    storage_options: StorageOptions | None = Field(
        None, description="fsspec options for the checkpoint; merged over the top-level ones."
    )

    @field_validator("uri")
    @classmethod
    def _known_model(cls, v: str) -> str:
        problem = describe_unknown(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _autocast_needs_fp32_weights(self) -> ModelSpec:
        if self.autocast != "none" and self.dtype != "float32":
            raise ValueError(f"autocast: needs dtype float32 (weights in {self.dtype} already run in {self.dtype})")
        return self

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "cuda:0", "mps"):
            raise ValueError(
                "expected auto, cpu, cuda or mps (Ray shows each actor only its own GPUs, as cuda:0)"
            )
        return v


class SamplingSpec(_Section):
    """How SDEdit runs; every output row records the values it actually used."""

    t0: float | list[float] = Field(
        0.5, description="Perturbation time in (0, 1], or a list of them (a t0 sweep: every item runs at "
        "every value, image names carry t0); a manifest column t0 overrides (that item runs once, at its t0).",
    )
    t0_mode: Literal["sweep", "cycle", "range"] = Field(
        "sweep", description="How a list of t0 values is used: sweep (every output of an item at every t0; "
        "image names carry t0), cycle (sample k runs at t0[k mod n]: augmentation variants at several t0), or "
        "range (t0 = [low, high]: each output's t0 drawn uniformly from its own generator seed). The t0 used "
        "is recorded in every index row.",
    )
    guidance_scale: float = Field(
        1.0, **GUIDANCE.bounds(), description="Class- or text-conditional models: classifier-free guidance, "
        "diffusers' meaning (1 = the conditional model alone, > 1 = guided, 0 = the unconditional model); a "
        "class-conditional model needs a null label unless 1. Manifest column guidance_scale overrides.",
    )
    prompt: str | None = Field(
        None, description="Text-conditional (latent) models: the prompt of rows without a prompt column value "
        "(none: the empty prompt). Manifest column prompt overrides.",
    )
    negative_prompt: str | None = Field(
        None, description="Text-conditional models: the negative prompt, the unconditional half of guidance "
        "(none: the empty prompt, as diffusers). Manifest column negative_prompt overrides.",
    )
    sampler: str = Field(DEFAULT_SAMPLER, description="Reverse-SDE sampler (see sdedit_kernel.SAMPLERS).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Sampler options (e.g. eta for ddim), checked against the kernel."
    )
    steps: int | None = Field(
        None, ge=1, description="Reverse steps actually taken from t0 to 0; default: the sampler's own."
    )
    passes: int = Field(
        1, ge=1, le=100, description="Repeat perturb-and-denoise, each pass from the last output."
    )
    samples: int = Field(
        1, **SAMPLES.bounds(), validation_alias=AliasChoices("samples", "samples_per_item"),
        description="(Formerly sampling.samples_per_item.) Independent outputs per item; manifest column "
        "samples overrides.",
    )
    seed: int = Field(0, **SEED.bounds(), description="Job seed; manifest column seed overrides per item.")

    @field_validator("t0")
    @classmethod
    def _t0_values(cls, v: float | list[float]) -> float | list[float]:
        from pipeline.naming import T0_DECIMALS, canonical_t0  # noqa: I001 - kept local to the check

        values = v if isinstance(v, list) else [v]
        if not values:
            raise ValueError("an empty list: give at least one t0 in (0, 1]")
        bad = [x for x in values if not T0.contains(x)]  # NaN fails this too
        if bad:
            raise ValueError(f"each t0 must be {T0.describe()}; got {', '.join(map(str, bad))}")
        seen: dict[float, float] = {}
        for x in values:
            if canonical_t0(x) in seen:
                raise ValueError(f"{seen[canonical_t0(x)]} and {x} are the same t0 (to {T0_DECIMALS} decimals): "
                                 "each value once")
            seen[canonical_t0(x)] = x
        return v

    @model_validator(mode="after")
    def _t0_mode_fits(self) -> SamplingSpec:
        if self.t0_mode != "sweep" and not isinstance(self.t0, list):
            raise ValueError(f"t0_mode: {self.t0_mode} needs t0 as a list")
        if self.t0_mode == "range" and (len(self.t0) != 2 or not self.t0[0] < self.t0[1]):
            raise ValueError("t0: t0_mode range needs t0 = [low, high] with low < high")
        return self

    @property
    def sweep(self) -> bool:
        """A t0 sweep (``t0`` a list, even of one value, in t0_mode sweep): image names and keys carry t0."""
        return isinstance(self.t0, list) and self.t0_mode == "sweep"

    def t0s_for(self, sample: int, generator_seed: int) -> list[float]:
        """The t0 value(s) output ``sample`` of an item runs at, by t0_mode; a range draw is a function
        of the output's own generator seed, so it never depends on batch or machine."""
        if self.t0_mode == "cycle":
            return [self.t0[sample % len(self.t0)]]
        if self.t0_mode == "range":
            import random

            from pipeline.naming import canonical_t0

            low, high = self.t0
            return [canonical_t0(low + (high - low) * random.Random(generator_seed).random())]
        return list(self.t0_values)

    @property
    def t0_values(self) -> tuple[float, ...]:
        """The job's t0 value(s), in the order given."""
        return tuple(self.t0) if isinstance(self.t0, list) else (self.t0,)

    @model_validator(mode="after")
    def _sampler_known(self) -> SamplingSpec:
        from sdedit_kernel import SAMPLERS, validate_sampler_options

        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: unknown {self.sampler!r}; choose from {', '.join(sorted(SAMPLERS))}")
        try:
            validate_sampler_options(self.sampler, dict(self.options))
        except ValueError as e:
            raise ValueError(f"options: {e}") from None
        return self


class ActorRange(_Section):
    """An autoscaling actor pool between ``min`` and ``max`` actors."""

    min: int = Field(1, ge=1, description="Fewest model actors.")
    max: int = Field(1, ge=1, description="Most model actors.")

    @model_validator(mode="after")
    def _ordered(self) -> ActorRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class ResourcesSpec(_Section):
    """How much of the cluster the job uses."""

    actors: ActorRange = Field(
        default_factory=ActorRange,
        description="Model actors: an int (fixed pool) or {min, max} (autoscaling).",
    )
    batch_size: int | Literal["auto"] = Field(
        8, description="Outputs per model call, or auto: measured on one actor's resources before the job "
        "(largest batch in 80% of free GPU memory; on CPUs, where images/s stop rising). Does not change outputs.",
    )
    max_crashes_per_item: int = Field(
        2, ge=1, le=100,
        description="A model actor's process that dies mid-batch is restarted and the batch retried (Ray); "
        "after a process death the batch is retried one item at a time, and an item on which the process "
        "died this many times becomes an error row (worker crash) instead of being retried forever.",
    )
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor (fractions share a GPU).")
    num_cpus: float = Field(
        1.0, gt=0.0, description="CPUs per actor; torch uses this many threads (at least 1)."
    )
    executor: Literal["auto", "ray", "local"] = Field(
        "auto", description="ray: Ray Data and model actors (crash isolation, several actors and machines). "
        "local: every stage in this process, no Ray (one model; a process crash stops the run, resume goes on). "
        "auto: local for a job of at most 1,000 outputs on one actor when no Ray cluster is connected or "
        "named (--address, RAY_ADDRESS), ray otherwise. Does not change outputs.",
    )

    @field_validator("batch_size")
    @classmethod
    def _batch_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 65_536:
            raise ValueError("expected auto or an int from 1 to 65536")
        return v

    @field_validator("actors", mode="before")
    @classmethod
    def _int_is_fixed_pool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("expected an int or {min, max}")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("at least 1 actor")
            return {"min": v, "max": v}
        return v

    @model_validator(mode="after")
    def _local_is_one_model(self) -> ResourcesSpec:
        if self.executor == "local" and self.actors.max > 1:
            raise ValueError(f"executor: local runs one model in this process; actors must be 1 "
                             f"(got up to {self.actors.max}), or use executor: ray")
        return self

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


class JobSpec(_Section):
    """A whole SDEdit job: input -> model -> sampling -> output, on the given resources."""

    input: InputSpec
    output: OutputSpec
    model: ModelSpec
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage_options: StorageOptions = Field(
        default_factory=dict, description="fsspec options for every URI (e.g. endpoint_url, anon, key)."
    )

    @model_validator(mode="after")
    def _device_matches_gpus(self) -> JobSpec:
        if self.model.device.startswith("cuda") and self.resources.num_gpus <= 0:
            raise ValueError("model.device: cuda needs resources.num_gpus > 0 (Ray hides GPUs otherwise)")
        if self.resources.num_gpus > 0 and self.model.device in ("cpu", "mps"):
            raise ValueError("model.device: a GPU is reserved (resources.num_gpus > 0) but device is cpu")
        return self

    def options_for(self, section: Literal["input", "output", "model"]) -> StorageOptions:
        """Top-level storage options refined by the section's own (section keys win)."""
        own = getattr(self, section).storage_options or {}
        return {**self.storage_options, **own}

    @property
    def device(self) -> str:
        if self.model.device == "auto":
            return "cuda" if self.resources.num_gpus > 0 else "cpu"
        return self.model.device

    @property
    def layout(self) -> OutputLayout:
        """Where outputs go and what identifies them (names carry t0 in a sweep)."""
        return OutputLayout(sweep=self.sampling.sweep, image_format=self.output.format,
                            webdataset=self.output.webdataset)

    def public_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data, with every credential redacted (for job.json and logs)."""
        data = self.model_dump(mode="json")
        data["storage_options"] = redact(data["storage_options"])
        for section in ("input", "output", "model"):
            data[section]["storage_options"] = redact(data[section]["storage_options"])
        data["input"]["manifest"] = redact(data["input"]["manifest"])
        data["output"]["uri"] = strip_userinfo(data["output"]["uri"])
        data["model"]["uri"] = strip_userinfo(data["model"]["uri"])
        return data
