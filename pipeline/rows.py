"""Row columns: every column a stage reads or writes, declared once with its Arrow type.

A row travels manifest -> decode -> model -> write -> index. Each column below says in which of
those stages' tables it lives; every stage's schema is derived from this one table, so a new
column (a manifest override, a new index field) is one line here plus the code that fills it.
The order here is the order of each schema, the index's included.

Stages: ``read`` (a column users give in a manifest), ``manifest`` (a normalised manifest row),
``work`` (decode's output: one row per output to make), ``result`` (the model stage's output),
``index`` (the Parquet index, one row per output).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STAGES = ("read", "manifest", "work", "result", "index")
_CARRIED = frozenset({"work", "result", "index"})  # decode fills it, the model and write stages pass it on
_GIVEN = frozenset({"read", "manifest"}) | _CARRIED  # read from a manifest and carried to the index


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    stages: frozenset[str]
    doc: str = ""


def _col(name: str, type_: pa.DataType, stages: frozenset[str] | set[str], doc: str = "") -> Column:
    return Column(name, type_, frozenset(stages), doc)


COLUMNS: tuple[Column, ...] = (
    _col("id", pa.string(), _GIVEN, "the item's unique id"),
    _col("shard", pa.string(), {"manifest"} | _CARRIED, "the manifest shard the item is in (pipeline.shards)"),
    _col("sample", pa.int32(), _CARRIED, "sample index within the item"),
    _col("image", pa.string(), {"index"}, "path relative to OUT; struct{bytes, path} with output.embed_images"),
    _col("guide", pa.string(), _GIVEN, "guide URI as the manifest gave it (relative ones: to the manifest's folder)"),
    _col("mask", pa.string(), _GIVEN, "mask URI as the manifest gave it (white = regenerate)"),
    _col("manifest", pa.string(), {"manifest"}, "the manifest file the row came from: its relative URIs resolve "
         "against it"),
    _col("t0", pa.float64(), _GIVEN, "perturbation time; a manifest value overrides sampling.t0"),
    _col("sampler", pa.string(), {"index"}),
    _col("steps", pa.int32(), {"result", "index"}, "reverse steps actually taken"),
    _col("passes", pa.int32(), {"index"}),
    _col("seed", pa.int64(), _GIVEN, "the job's seed, or the manifest's seed for this item"),
    _col("model", pa.string(), {"result", "index"}, "model name @ weights digest"),
    _col("width", pa.int32(), {"index"}),
    _col("height", pa.int32(), {"index"}),
    _col("status", pa.string(), _CARRIED, "ok or error"),
    _col("error", pa.string(), {"manifest"} | _CARRIED, "error message, 'kind: detail'; null when ok"),
    _col("faithfulness_l2", pa.float64(), {"result", "index"}, "RMS distance output - guide, pixels in [0, 1]"),
    _col("duration_ms", pa.float64(), {"result", "index"}),
    _col("generator_seed", pa.int64(), _CARRIED, "seed of this output's torch.Generator: seed_for(seed, id, sample)"),
    _col("model_calls", pa.int64(), {"result", "index"}),
    _col("notes", pa.string(), _CARRIED, "conversions applied to the inputs; null: none"),
    # Where a row's guide and mask came from (docs/workflows.md): the way the row gave them, the source
    # URIs, and the guide and mask the pipeline built, recorded under OUT/inputs/ (paths relative to OUT).
    _col("workflow", pa.string(), {"manifest"} | _CARRIED, "guide, composite or stroke_edit"),
    _col("base", pa.string(), _GIVEN),
    _col("overlay", pa.string(), _GIVEN),
    _col("overlay_mask", pa.string(), _GIVEN),
    _col("original", pa.string(), _GIVEN),
    _col("edited", pa.string(), _GIVEN),
    _col("built_guide", pa.string(), _CARRIED),
    _col("built_mask", pa.string(), _CARRIED),
    _col("error_kind", pa.string(), {"manifest"} | _CARRIED, "the error's kind (failures by reason)"),
    # Class-conditional models: the class index the output was made for (null: unlabelled, the
    # unconditional model), its name from the model's labels.json, and the guidance scale used.
    _col("label", pa.int64(), _GIVEN, "class index (a manifest may give an index or a class name)"),
    _col("label_name", pa.string(), {"manifest"} | _CARRIED, "the label's name in the model's labels.json"),
    _col("guidance_scale", pa.float64(), _GIVEN, "classifier-free guidance; a manifest value overrides "
         "sampling.guidance_scale"),
    # Manifest-only overrides: they shape the work rows but are not carried on.
    _col("samples", pa.int64(), {"read", "manifest"}, "outputs for this item (sampling.samples)"),
    _col("x", pa.float64(), {"read", "manifest"}, "overlay corner (composite rows)"),
    _col("y", pa.float64(), {"read", "manifest"}),
    _col("scale", pa.float64(), {"read", "manifest"}),
    _col("margin", pa.int64(), {"read", "manifest"}, "input.composite_margin / input.edit_margin"),
    _col("threshold", pa.int64(), {"read", "manifest"}, "input.edit_threshold (stroke edits)"),
    # Text-conditional (latent) models: the prompt and negative prompt the output was made with.
    _col("prompt", pa.string(), _GIVEN, "text prompt; a manifest value overrides sampling.prompt"),
    _col("negative_prompt", pa.string(), _GIVEN, "negative prompt (the unconditional half of guidance)"),
    # A guide given as image bytes in the manifest (a datasets-style `image` column).
    _col("guide_bytes", pa.binary(), {"manifest"}, "the manifest's embedded guide image, encoded"),
    # Resume inside an unfinished shard: the item's outputs an earlier run made (decode skips them).
    _col("done", pa.list_(pa.string()), {"manifest"}, "OutputLayout.done_key of each output already made"),
    # Payloads between stages.
    _col("pixels", pa.binary(), {"work"}, "guide, uint8 [H, W, C]"),
    _col("edit_mask", pa.binary(), {"work"}, "uint8 [H, W]: 1 regenerate, 0 keep; null: edit everything"),
    _col("output", pa.binary(), {"result"}, "uint8 [H, W, C]"),
)
TYPES: dict[str, pa.DataType] = {c.name: c.type for c in COLUMNS}


def names(stage: str) -> tuple[str, ...]:
    """The columns of one stage's rows, in order."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; one of {STAGES}")
    return tuple(c.name for c in COLUMNS if stage in c.stages)


def schema(stage: str) -> pa.Schema:
    return pa.schema([(name, TYPES[name]) for name in names(stage)])


def carried_from(previous: str, stage: str) -> tuple[str, ...]:
    """Columns a stage copies unchanged from the previous stage's rows."""
    before = set(names(previous))
    return tuple(name for name in names(stage) if name in before)


READ_COLUMNS = names("read")
URI_COLUMNS = ("guide", "mask", "base", "overlay", "overlay_mask", "original", "edited")
# Where a row's inputs came from: passed through from decode to the index (and read by the sheets).
INPUT_COLUMNS = ("workflow", "base", "overlay", "overlay_mask", "original", "edited", "built_guide", "built_mask")
MANIFEST_SCHEMA = schema("manifest")
WORK_SCHEMA = schema("work")
RESULT_SCHEMA = schema("result")
