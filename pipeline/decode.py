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

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.index import INPUT_COLUMNS
from pipeline.naming import output_key
from pipeline.redact import redact_text, strip_userinfo
from pipeline.storage import FileTooLargeError, read_bytes
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
    ("notes", pa.string()),  # conversions applied to this item's inputs, "; "-joined; null: none
    *[(name, pa.string()) for name in INPUT_COLUMNS],  # workflow, source URIs, built inputs (index.py)
])
MODES = {1: "L", 3: "RGB"}
DEFAULT_MAX_PIXELS = 50_000_000
BYTES_PER_PIXEL = 8  # the most an uncompressed image format stores per pixel (16-bit RGBA)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_REFUSED_MODES = {"F": "32-bit float pixels have no defined range", "LAB": "Lab colour has no conversion here"}


@dataclass(frozen=True)
class DecodeSettings:
    """What decoding needs to know about the job (picklable, sent with every task)."""

    channels: int
    height: int
    width: int
    policy: str
    t0: float | tuple[float, ...]  # a tuple: a t0 sweep, every item at every value
    seed: int
    samples: int
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    # outputs already written (resume), as pipeline.naming.output_key: (id, t0 or None, sample)
    done: frozenset[tuple[str, float | None, int]] = field(default=frozenset(), repr=False)
    max_pixels: int = DEFAULT_MAX_PIXELS
    # composite and stroke-edit rows (pipeline.compose); defaults as in InputSpec
    composite_mask: str = "overlay"
    composite_margin: int = 2
    edit_threshold: int = 24
    edit_margin: int = 2
    out_uri: str | None = None  # where built guides and masks are recorded (OUT/inputs/); None: nowhere
    out_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials


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


def load_image(uri: str, options: Mapping[str, Any], what: str,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode one image; raises ``ValueError("<reason> <what>: ...")`` on any failure.

    The pixel count is checked from the header, before any pixel is decoded: a small file that
    claims a huge image (a decompression bomb) never reaches memory. A file is never read beyond
    what an image within the limit can take (:data:`BYTES_PER_PIXEL` per pixel, uncompressed 16-bit
    RGBA, plus 1 MiB of headers): a multi-gigabyte file is refused from its size, unread.
    """
    shown = strip_userinfo(uri)
    max_bytes = max_pixels * BYTES_PER_PIXEL + 2**20
    try:
        data = read_bytes(uri, options, limit=max_bytes)
    except FileTooLargeError as e:
        raise ValueError(f"bad {what}: {shown}: {e}, more than an image of input.max_pixels={max_pixels} "
                         "pixels can take") from None
    except FileNotFoundError:
        raise ValueError(f"missing {what}: {shown} not found") from None
    except Exception as e:  # noqa: BLE001 - any storage failure is this item's failure
        raise ValueError(f"unreadable {what}: {shown}: {type(e).__name__}: {_short(e)}") from None
    if not data:
        raise ValueError(f"bad {what}: {shown}: empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(f"bad {what}: {shown}: {w}x{h} = {w * h} pixels, over the limit "
                             f"input.max_pixels={max_pixels} (decompression bomb?)")
        img.load()
        return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise ValueError(f"bad {what}: {shown}: over Pillow's pixel limit (decompression bomb?): "
                         f"{_short(e)}") from None
    except ValueError as e:
        if str(e).startswith(f"bad {what}:"):
            raise
        raise ValueError(f"bad {what}: {shown}: cannot decode image ({type(e).__name__}: {_short(e)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"bad {what}: {shown}: cannot decode image ({type(e).__name__}: {_short(e)})") from None


def _short(e: BaseException) -> str:
    return redact_text(str(e).splitlines()[0][:200]) if str(e) else ""


def to_standard_mode(img: Image.Image, what: str, notes: list[str]) -> Image.Image:
    """Bring any Pillow mode to L or RGB where the conversion is sound; refuse it otherwise.

    Pillow's own ``convert("L")`` clips 16-bit values at 255 (a 16-bit guide turns white), and
    ``convert("RGB")`` drops alpha and shows whatever colour hides under transparent pixels; so
    16-bit values are scaled (/257) and transparency is composited onto black (black is also what
    ``pad`` adds). Every conversion is stated in ``notes``.
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode in _REFUSED_MODES:
        raise ValueError(f"bad {what}: mode {mode} refused: {_REFUSED_MODES[mode]}")
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(img, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"bad {what}: mode {mode} refused: values outside 0..65535")
        notes.append(f"{what} {mode} scaled to 8 bits")
        return Image.fromarray(((values + 128) // 257).clip(0, 255).astype(np.uint8), "L")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"))
        base = img.convert("RGB" if img.mode.startswith("RGB") else "L")
        if (alpha == 255).all():
            notes.append(f"{what} {mode}: opaque alpha dropped")
            return base
        notes.append(f"{what} {mode}: transparency composited onto black")
        return Image.composite(base, Image.new(base.mode, base.size, 0), img.getchannel("A"))
    try:
        converted = img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"bad {what}: mode {mode} refused: {_short(e)}") from None
    if mode not in ("P", "1"):
        notes.append(f"{what} {mode} converted to RGB" + (" (no colour management)" if mode == "CMYK" else ""))
    return converted


def guide_pixels(img: Image.Image, settings: DecodeSettings, notes: list[str] | None = None) -> np.ndarray:
    """uint8 [H, W, C] guide in the model's channel count, fitted to the working size."""
    notes = [] if notes is None else notes
    standard = to_standard_mode(img, "guide", notes)
    target = MODES[settings.channels]
    if standard.mode == "RGB" and target == "L":
        notes.append("guide RGB converted to L")
    converted = standard.convert(target)
    if converted.size != (settings.width, settings.height):
        notes.append(f"guide {converted.size[0]}x{converted.size[1]} fitted to "
                     f"{settings.width}x{settings.height} by {settings.policy}")
    fitted = fit_image(converted, settings.height, settings.width, settings.policy, Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8).reshape(settings.height, settings.width, settings.channels)


def mask_bits(mask: Image.Image, guide_size: tuple[int, int], settings: DecodeSettings,
              notes: list[str] | None = None) -> np.ndarray:
    """uint8 [H, W] edit mask: white (>= 128) = 1 = regenerate, black = 0 = keep.

    The mask is first brought to the guide's original size, then fitted exactly as the guide was,
    always nearest-neighbour, then binarised: no grey edge ever reaches the sampler. A mask with
    grey levels, or of another size than its guide, is used, and ``notes`` says so.
    """
    notes = [] if notes is None else notes
    grey = to_standard_mode(mask, "mask", notes).convert("L")
    levels = np.asarray(grey)
    grey_count = int(np.count_nonzero((levels > 0) & (levels < 255)))
    if grey_count:
        notes.append(f"mask not binary: {grey_count} of {levels.size} pixels grey, thresholded at 128 "
                     "(>= 128 regenerate)")
    if grey.size != guide_size:
        notes.append(f"mask {grey.size[0]}x{grey.size[1]} resized to the guide's "
                     f"{guide_size[0]}x{guide_size[1]} (nearest)")
        grey = grey.resize(guide_size, Image.Resampling.NEAREST)
    fitted = fit_image(grey, settings.height, settings.width, settings.policy, Image.Resampling.NEAREST)
    return (np.asarray(fitted, dtype=np.uint8) >= 128).astype(np.uint8)


def decode_batch(batch: pa.Table, settings: DecodeSettings) -> pa.Table:
    """Manifest rows -> :data:`WORK_SCHEMA` rows, ``samples`` per item (a Ray task)."""
    out: dict[str, list[Any]] = {name: [] for name in WORK_SCHEMA.names}
    for row in batch.to_pylist():
        samples = row["samples"] or settings.samples
        base_seed = row["seed"] if row["seed"] is not None else settings.seed
        # A per-item t0 overrides the job's t0, a sweep included: that item runs once, at its own t0.
        t0s = [row["t0"]] if row["t0"] is not None else list(_as_tuple(settings.t0))
        sweep = isinstance(settings.t0, tuple)
        todo = [(t0, s) for t0 in t0s for s in range(samples)
                if output_key(row["id"], t0, s, sweep) not in settings.done]
        if not todo:
            continue
        pixels = edit_mask = None
        error = row["problem"]
        notes: list[str] = []
        record = {name: strip_userinfo(row[name]) if row.get(name) else None for name in INPUT_COLUMNS}
        record["workflow"] = row.get("workflow") or "guide"
        if error is None:
            try:
                pixels, edit_mask = _item_inputs(row, record, settings, notes)
            except ValueError as e:
                error, pixels, edit_mask = str(e), None, None
            except Exception as e:  # noqa: BLE001 - an unexpected decoder failure is still one item's
                error, pixels, edit_mask = f"decode error: {type(e).__name__}: {_short(e)}", None, None
        for t0, sample in todo:
            out["id"].append(row["id"])
            out["sample"].append(sample)
            out["guide"].append(strip_userinfo(row["guide"]) if row["guide"] else None)
            out["mask"].append(strip_userinfo(row["mask"]) if row["mask"] else None)
            out["t0"].append(t0)
            out["base_seed"].append(base_seed)
            # Not seeded by t0: every t0 of a sweep starts from the same noise, so a sweep's
            # outputs of one (id, sample) differ only by t0.
            out["seed"].append(seed_for(base_seed, row["id"], sample))
            out["pixels"].append(pixels)
            out["edit_mask"].append(edit_mask)
            out["status"].append("ok" if error is None else "error")
            out["error"].append(error)
            out["notes"].append("; ".join(notes) or None)
            for name in INPUT_COLUMNS:
                out[name].append(record[name])
    return pa.Table.from_pydict(out, schema=WORK_SCHEMA)


def _item_inputs(row: Mapping[str, Any], record: dict[str, Any], settings: DecodeSettings,
                 notes: list[str]) -> tuple[bytes, bytes | None]:
    """Guide pixels and edit mask bits of one item; built ones are recorded (paths into ``record``)."""
    if record["workflow"] == "guide":
        guide_img = load_image(row["guide"], settings.storage_options, "guide", settings.max_pixels)
        pixels = guide_pixels(guide_img, settings, notes)
        if not row["mask"]:
            return pixels.tobytes(), None
        mask_img = load_image(row["mask"], settings.storage_options, "mask", settings.max_pixels)
        return pixels.tobytes(), mask_bits(mask_img, guide_img.size, settings, notes).tobytes()
    from pipeline.compose import build_inputs, record_inputs  # compose builds on this module's loaders

    pixels, bits = build_inputs(row, settings, notes)
    try:
        record["built_guide"], record["built_mask"] = record_inputs(row["id"], pixels, bits, settings)
    except Exception as e:  # noqa: BLE001 - an input that cannot be recorded fails its item
        raise ValueError(f"write error: built inputs: {type(e).__name__}: {_short(e)}") from None
    return pixels.tobytes(), None if bits is None else bits.tobytes()


def _as_tuple(t0: float | tuple[float, ...]) -> tuple[float, ...]:
    return t0 if isinstance(t0, tuple) else (t0,)
