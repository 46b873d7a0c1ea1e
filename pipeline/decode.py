"""Decoding: manifest rows -> fitted guide pixels and binary edit masks, one work row per output.

Runs as plain-function Ray tasks on CPUs. Every failure (missing file, undecodable bytes, bad
override) becomes an error row that names its reason; nothing here may stop the job. Each item is
expanded into one row per sample, each with its own generator seed, so the model stage works on
outputs, not items.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.storage import read_bytes
from sdedit_kernel import seed_for

WORK_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("sample", pa.int32()),
    ("guide", pa.string()),
    ("mask", pa.string()),
    ("t0", pa.float64()),
    ("base_seed", pa.int64()),
    ("seed", pa.int64()),
    ("pixels", pa.binary()),  # guide, uint8 [H, W, C]
    ("edit_mask", pa.binary()),  # uint8 [H, W] of 0 (keep) / 1 (regenerate); null: edit everything
    ("status", pa.string()),
    ("error", pa.string()),
])
MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class DecodeSettings:
    """What decoding needs to know about the job (picklable, sent with every task)."""

    channels: int
    height: int
    width: int
    policy: str
    t0: float
    seed: int
    samples: int
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    done: frozenset[tuple[str, int]] = frozenset()  # (id, sample) already written (resume)


def fit_image(img: Image.Image, height: int, width: int, policy: str, resample: int) -> Image.Image:
    """Fit ``img`` to (height, width) by the spec's policy: resize, center_crop or pad."""
    w, h = img.size
    if (w, h) == (width, height):
        return img
    if policy == "resize":
        return img.resize((width, height), resample)
    if policy == "center_crop":
        scale = max(width / w, height / h)
        sw, sh = max(width, math.ceil(w * scale - 1e-9)), max(height, math.ceil(h * scale - 1e-9))
        scaled = img.resize((sw, sh), resample)
        left, top = (sw - width) // 2, (sh - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    scale = min(width / w, height / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (width, height), 0)
    canvas.paste(img.resize((sw, sh), resample), ((width - sw) // 2, (height - sh) // 2))
    return canvas


def load_image(uri: str, options: Mapping[str, Any], what: str) -> Image.Image:
    """Read and decode one image; raises ``ValueError("<what> ...: reason")`` on any failure."""
    try:
        data = read_bytes(uri, options)
    except FileNotFoundError:
        raise ValueError(f"missing {what}: {uri} not found") from None
    except Exception as e:  # noqa: BLE001 - any storage failure is this item's failure
        raise ValueError(f"unreadable {what}: {uri}: {type(e).__name__}: {e}") from None
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"bad {what}: {uri}: cannot decode image ({type(e).__name__})") from None


def guide_pixels(img: Image.Image, settings: DecodeSettings) -> np.ndarray:
    """uint8 [H, W, C] guide in the model's channel count, fitted to the working size."""
    converted = img.convert(MODES[settings.channels])
    fitted = fit_image(converted, settings.height, settings.width, settings.policy, Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8).reshape(settings.height, settings.width, settings.channels)


def mask_bits(mask: Image.Image, guide_size: tuple[int, int], settings: DecodeSettings) -> np.ndarray:
    """uint8 [H, W] edit mask: white (>= 128) = 1 = regenerate, black = 0 = keep.

    The mask is first brought to the guide's original size, then fitted exactly as the guide was,
    always nearest-neighbour, then binarised: no grey edge ever reaches the sampler.
    """
    grey = mask.convert("L")
    if grey.size != guide_size:
        grey = grey.resize(guide_size, Image.Resampling.NEAREST)
    fitted = fit_image(grey, settings.height, settings.width, settings.policy, Image.Resampling.NEAREST)
    return (np.asarray(fitted, dtype=np.uint8) >= 128).astype(np.uint8)


def decode_batch(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Manifest rows -> :data:`WORK_SCHEMA` rows, ``samples`` per item (a Ray task)."""
    out: dict[str, list[Any]] = {name: [] for name in WORK_SCHEMA.names}
    for row in batch.to_pylist():
        samples = row["samples"] or settings.samples
        base_seed = row["seed"] if row["seed"] is not None else settings.seed
        t0 = row["t0"] if row["t0"] is not None else settings.t0
        todo = [s for s in range(samples) if (row["id"], s) not in settings.done]
        if not todo:
            continue
        pixels = edit_mask = None
        error = row["problem"]
        if error is None:
            try:
                guide_img = load_image(row["guide"], settings.storage_options, "guide")
                pixels = guide_pixels(guide_img, settings).tobytes()
                if row["mask"]:
                    mask_img = load_image(row["mask"], settings.storage_options, "mask")
                    edit_mask = mask_bits(mask_img, guide_img.size, settings).tobytes()
            except ValueError as e:
                error, pixels, edit_mask = str(e), None, None
            except Exception as e:  # noqa: BLE001 - an unexpected decoder failure is still one item's
                error, pixels, edit_mask = f"decode error: {type(e).__name__}: {e}", None, None
        for sample in todo:
            out["id"].append(row["id"])
            out["sample"].append(sample)
            out["guide"].append(row["guide"])
            out["mask"].append(row["mask"])
            out["t0"].append(t0)
            out["base_seed"].append(base_seed)
            out["seed"].append(seed_for(base_seed, row["id"], sample))
            out["pixels"].append(pixels)
            out["edit_mask"].append(edit_mask)
            out["status"].append("ok" if error is None else "error")
            out["error"].append(error)
    return pa.Table.from_pydict(out, schema=WORK_SCHEMA)
