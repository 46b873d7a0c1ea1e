"""Decoding: manifest rows -> fitted guide pixels and binary edit masks, one work row per output.

Runs as plain-function Ray tasks on CPUs. Every failure (missing or empty file, undecodable or
truncated bytes, an image over the pixel limit, a pixel mode with no sound conversion, bad
override) becomes an error row that names its reason; nothing here may stop the job. Conversions
that change what the user gave (a mode converted, alpha flattened, a grey mask thresholded, a mask
of another size resized) are stated in the row's ``notes``. Each item is expanded into one row per
sample (and per t0 in a t0 sweep), each with its own generator seed, so the model stage works on
outputs, not items. Composite and stroke-edit rows get their guide and mask built by
:mod:`pipeline.compose`, which records them under OUT/inputs/.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.compose import build_inputs, record_inputs
from pipeline.errors import ItemError
from pipeline.images import WorkingSize, guide_pixels, load_image, mask_bits, open_image, short_reason
from pipeline.manifest import resolved
from pipeline.naming import OutputLayout
from pipeline.redact import strip_userinfo
from pipeline.rows import INPUT_COLUMNS, WORK_SCHEMA
from pipeline.spec import InputSpec, SamplingSpec
from sdedit_kernel import seed_for


@dataclass(frozen=True)
class DecodeSettings:
    """What decoding needs to know about the job (picklable, sent with every task)."""

    working: WorkingSize
    input: InputSpec
    sampling: SamplingSpec
    layout: OutputLayout
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # input's; may hold credentials
    out_uri: str | None = None  # where built guides and masks are recorded (OUT/inputs/); None: nowhere
    out_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    conditioning: str | None = None  # "class" (rows carry label, guidance) or "text" (prompts, guidance)


def planned_outputs(row: Mapping[str, Any], sampling: SamplingSpec, layout: OutputLayout) -> list[tuple[float, int]]:
    """The (t0, sample) outputs a manifest row asks for, less those its ``done`` column lists."""
    samples = row["samples"] or sampling.samples
    if row["t0"] is not None:  # a per-item t0 overrides the job's, a sweep included: one t0
        pairs = [(row["t0"], s) for s in range(samples)]
    elif sampling.t0_mode == "sweep":  # every output at every t0, t0 by t0
        pairs = [(t0, s) for t0 in sampling.t0_values for s in range(samples)]
    else:
        seed = row["seed"] if row["seed"] is not None else sampling.seed
        pairs = [(t0, s) for s in range(samples) for t0 in sampling.t0s_for(s, seed_for(seed, row["id"], s))]
    done = row.get("done")
    if not done:
        return pairs
    skip = set(done)
    return [(t0, s) for t0, s in pairs if layout.done_key(t0, s) not in skip]


def decode_batch(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Manifest rows -> :data:`pipeline.rows.WORK_SCHEMA` rows, ``samples`` per item (a Ray task)."""
    out: dict[str, list[Any]] = {name: [] for name in WORK_SCHEMA.names}
    sampling = settings.sampling
    for row in batch.to_pylist():
        todo = planned_outputs(row, sampling, settings.layout)
        if not todo:
            continue
        seed = row["seed"] if row["seed"] is not None else sampling.seed
        pixels = edit_mask = None
        error, error_kind = row["error"], row["error_kind"]
        notes: list[str] = []
        guidance = prompt = negative = None
        if settings.conditioning is not None:
            guidance = row["guidance_scale"] if row["guidance_scale"] is not None else sampling.guidance_scale
        if settings.conditioning == "text":
            prompt = row["prompt"] if row["prompt"] is not None else sampling.prompt
            negative = row["negative_prompt"] if row["negative_prompt"] is not None else sampling.negative_prompt
        record = {name: strip_userinfo(row[name]) if row.get(name) else None for name in INPUT_COLUMNS}
        record["workflow"] = row.get("workflow") or "guide"
        if error is None:
            try:
                pixels, edit_mask = _item_inputs(resolved(row), record, settings, notes)
            except ItemError as e:
                error, error_kind = e.message, e.kind
            except Exception as e:  # noqa: BLE001 - an unexpected decoder failure is still one item's
                failure = ItemError("decode error", f"{type(e).__name__}: {short_reason(e)}")
                error, error_kind = failure.message, failure.kind
        for t0, sample in todo:
            values = {
                "id": row["id"], "shard": row["shard"], "sample": sample, "t0": t0, "seed": seed, "label": row["label"],
                "label_name": row["label_name"], "guidance_scale": guidance, "prompt": prompt,
                "negative_prompt": negative,
                "guide": strip_userinfo(row["guide"]) if row["guide"] else None,
                "mask": strip_userinfo(row["mask"]) if row["mask"] else None,
                # Not seeded by t0: every t0 of a sweep starts from the same noise, so a sweep's
                # outputs of one (id, sample) differ only by t0.
                "generator_seed": seed_for(seed, row["id"], sample),
                "pixels": pixels, "edit_mask": edit_mask,
                "status": "ok" if error is None else "error", "error": error, "error_kind": error_kind,
                "notes": "; ".join(notes) or None, **record,
            }
            for name, column in out.items():
                column.append(values[name])
    return pa.Table.from_pydict(out, schema=WORK_SCHEMA)


def _item_inputs(row: Mapping[str, Any], record: dict[str, Any], settings: DecodeSettings,
                 notes: list[str]) -> tuple[bytes, bytes | None]:
    """Guide pixels and edit mask bits of one item; built ones are recorded (paths into ``record``)."""
    options, limit = settings.storage_options, settings.input.max_pixels
    if record["workflow"] == "guide" and row["guide_bytes"] is None:
        guide_img = load_image(row["guide"], options, "guide", limit)
        pixels = guide_pixels(guide_img, settings.working, notes)
        if not row["mask"]:
            return pixels.tobytes(), None
        mask_img = load_image(row["mask"], options, "mask", limit)
        return pixels.tobytes(), mask_bits(mask_img, guide_img.size, settings.working, notes).tobytes()
    if record["workflow"] == "guide":  # embedded in the manifest: recorded under OUT/inputs/ like a built one
        guide_img = open_image(row["guide_bytes"], "manifest image column", "guide", limit)
        pixels = guide_pixels(guide_img, settings.working, notes)
        bits = None
        if row["mask"]:
            bits = mask_bits(load_image(row["mask"], options, "mask", limit), guide_img.size, settings.working, notes)
    else:
        pixels, bits = build_inputs(row, settings.input, settings.working, options, notes)
    if settings.out_uri is not None:
        try:
            record["built_guide"], record["built_mask"] = record_inputs(
                row["shard"], row["id"], pixels, bits, settings.out_uri, settings.out_options)
        except Exception as e:  # noqa: BLE001 - an input that cannot be recorded fails its item
            raise ItemError("write error", f"built inputs: {type(e).__name__}: {short_reason(e)}") from None
    return pixels.tobytes(), None if bits is None else bits.tobytes()
