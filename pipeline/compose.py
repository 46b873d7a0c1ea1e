"""Built inputs: the guide and edit mask of a composite row or a stroke-edit row, as pure functions.

Two editing workflows give their guide indirectly (see docs/workflows.md):
- composite: a ``base`` image with an ``overlay`` pasted on it at (x, y), scaled; the overlay's
  alpha (or an ``overlay_mask``, or else its whole rectangle) says which of its pixels are pasted.
  The edit mask is the pasted region grown by a margin, or the whole image.
- stroke edit: the ``original`` image and the ``edited`` one (strokes painted on a copy); the guide
  is the edited image, the edit mask is where the two differ by more than a threshold, grown.

Where a region lies is decided at the source images' resolution (exact, before any resampling);
the region is then fitted to the working size conservatively (a working pixel is edited if any
source pixel under it is, so a thin stroke never vanishes in a downscale) and grown by the margin
in working pixels, the pixels the sampler sees. Reading goes through pipeline.images; decode.py
calls :func:`build_inputs` and :func:`record_inputs`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import ItemError
from pipeline.images import (
    MODES,
    WorkingSize,
    encode_image,
    fit_image,
    guide_pixels,
    load_image,
    mask_bits,
    to_standard_mode,
)
from pipeline.naming import input_relpath
from pipeline.spec import InputSpec
from pipeline.storage import join_uri, url_to_fs, write_atomic


def grow(bits: np.ndarray, margin: int) -> np.ndarray:
    """Dilate a 0/1 mask by ``margin`` pixels (a square: every pixel within Chebyshev distance)."""
    out = bits.astype(bool)
    if margin <= 0 or not out.any():
        return out.astype(np.uint8)
    for axis in (0, 1):  # a square dilation is a row pass then a column pass
        padded = np.pad(out, [(margin, margin) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        out = np.logical_or.reduce([padded.take(range(k, k + n), axis=axis) for k in range(2 * margin + 1)])
    return out.astype(np.uint8)


def fit_region(region: np.ndarray, height: int, width: int, fit: str) -> np.ndarray:
    """A bool region at source resolution -> 0/1 bits at the working size, fitted as the guide was.

    Box filtering then "any coverage" keeps every source pixel's region: nearest-neighbour (used
    for users' masks) could drop a one-pixel stroke when the image is scaled down.
    """
    img = Image.fromarray(region.astype(np.uint8) * 255)
    fitted = fit_image(img, height, width, fit, Image.Resampling.BOX)
    return (np.asarray(fitted, dtype=np.uint8) > 0).astype(np.uint8)


def place(value: float | None, base: int, size: int) -> int:
    """Overlay corner in base pixels: None centres it; a value in (0, 1) is a fraction of the base."""
    if value is None:
        return (base - size) // 2
    if 0 < value < 1:
        return math.floor(value * base)
    return int(value)


def _split_alpha(overlay: Image.Image, mode: str, notes: list[str]) -> tuple[Image.Image, np.ndarray | None]:
    """The overlay's colour in ``mode`` and its alpha (uint8), or None when it has no alpha channel.

    The colour is taken as is, not composited onto black as a guide's would be: the alpha blends it
    onto the base instead.
    """
    if (overlay.mode == "P" and "transparency" in overlay.info) or overlay.mode == "PA":
        overlay = overlay.convert("RGBA")
    if overlay.mode in ("RGBA", "LA"):
        alpha = np.asarray(overlay.getchannel("A"), dtype=np.uint8)
        colour = overlay.convert("RGB" if overlay.mode == "RGBA" else "L")
        return colour.convert(mode), alpha
    return to_standard_mode(overlay, "overlay", notes).convert(mode), None


def paste_overlay(base: Image.Image, overlay: Image.Image, overlay_mask: Image.Image | None, *,
              x: float | None, y: float | None, scale: float | None, mode: str, max_pixels: int,
              notes: list[str]) -> tuple[Image.Image, np.ndarray]:
    """Paste ``overlay`` on ``base``; returns the composite (base size, ``mode``) and the pasted region.

    Coverage (0..255) says how much of each overlay pixel is pasted: ``overlay_mask`` if given
    (white = paste), else the overlay's alpha, else all of it. The composite is
    ``base * (1 - c) + overlay * c``, so base pixels outside the region are kept exactly. The part
    of the overlay outside the base is clipped (and noted); an overlay entirely outside, or with
    nothing to paste, raises ``ItemError("bad composite", ...)``.
    """
    base_img = to_standard_mode(base, "base", notes).convert(mode)
    colour, alpha = _split_alpha(overlay, mode, notes)
    source = "whole rectangle"
    if overlay_mask is not None:
        cover_img = to_standard_mode(overlay_mask, "overlay mask", notes).convert("L")
        if cover_img.size != colour.size:
            notes.append(f"overlay mask {cover_img.width}x{cover_img.height} resized to the overlay's "
                         f"{colour.width}x{colour.height} (nearest)")
            cover_img = cover_img.resize(colour.size, Image.Resampling.NEAREST)
        source = "overlay_mask" + (" (the overlay's alpha ignored)" if alpha is not None else "")
    elif alpha is not None:
        cover_img, source = Image.fromarray(alpha), "alpha"
    else:
        cover_img = Image.new("L", colour.size, 255)
    factor = 1.0 if scale is None else float(scale)
    sw, sh = max(1, round(colour.width * factor)), max(1, round(colour.height * factor))
    if sw * sh > max_pixels:
        raise ItemError("bad composite", f"the overlay scaled by {factor:g} is {sw}x{sh} = {sw * sh} "
                         f"pixels, over input.max_pixels={max_pixels}")
    if (sw, sh) != colour.size:
        colour = colour.resize((sw, sh), Image.Resampling.BICUBIC)
        cover_img = cover_img.resize((sw, sh), Image.Resampling.BILINEAR)
    bw, bh = base_img.size
    left, top = place(x, bw, sw), place(y, bh, sh)
    x0, y0, x1, y1 = max(0, left), max(0, top), min(bw, left + sw), min(bh, top + sh)
    if x0 >= x1 or y0 >= y1:
        raise ItemError("bad composite", f"the {sw}x{sh} overlay at ({left},{top}) lies outside the "
                         f"{bw}x{bh} base")
    channels = len(mode)
    out = np.asarray(base_img, dtype=np.float64).reshape(bh, bw, channels).copy()
    ov = np.asarray(colour, dtype=np.float64).reshape(sh, sw, channels)[y0 - top:y1 - top, x0 - left:x1 - left]
    cover = np.asarray(cover_img, dtype=np.float64)[y0 - top:y1 - top, x0 - left:x1 - left, None] / 255.0
    if not cover.any():
        raise ItemError("bad composite", f"the overlay pastes no pixel (its {source} is empty where it "
                         "meets the base)")
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1.0 - cover) + ov * cover
    region = np.zeros((bh, bw), bool)
    region[y0:y1, x0:x1] = cover[..., 0] > 0
    clipped = (x0, y0, x1, y1) != (left, top, left + sw, top + sh)
    notes.append(f"composite: overlay {sw}x{sh} at ({left},{top}) scale {factor:g}, pixels from its {source}"
                 + (", clipped to the base" if clipped else ""))
    pixels = np.rint(out).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode), region


def difference(original: Image.Image, edited: Image.Image, *, mode: str, threshold: int,
               notes: list[str]) -> tuple[Image.Image, np.ndarray]:
    """The edited image in ``mode`` and where it differs from the original by more than ``threshold``.

    A pixel differs when any channel's absolute difference (0..255, in the model's mode: what the
    sampler sees) is above ``threshold``. Images of different sizes raise
    ``ItemError("bad stroke edit", ...)``: the row is not what it claims to be.
    """
    before = to_standard_mode(original, "original", notes).convert(mode)
    after = to_standard_mode(edited, "edited", notes).convert(mode)
    if before.size != after.size:
        raise ItemError("bad stroke edit", f"original is {before.width}x{before.height} but edited is "
                         f"{after.width}x{after.height}; they must be the same size")
    delta = np.abs(np.asarray(after, np.int16) - np.asarray(before, np.int16))
    return after, delta.reshape(after.height, after.width, -1).max(axis=2) > threshold


def build_inputs(row: Mapping[str, Any], spec: InputSpec, working: WorkingSize, options: Mapping[str, Any],
                 notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Guide pixels uint8 [H, W, C] and edit mask bits [H, W] (None: edit everything) of a row.

    ``spec``: the job's input section (limits, margins, threshold, composite_mask); ``options``: the
    storage options to read the row's images with. A row's own ``mask`` always wins over the derived
    one (the sources are still read and checked). Raises :class:`ItemError` on any failure.
    """
    limit, mode = spec.max_pixels, MODES[working.channels]
    if row["workflow"] == "composite":
        cover = load_image(row["overlay_mask"], options, "overlay mask", limit) if row["overlay_mask"] else None
        guide, region = paste_overlay(
            load_image(row["base"], options, "base", limit), load_image(row["overlay"], options, "overlay", limit),
            cover, x=row["x"], y=row["y"], scale=row["scale"], mode=mode, max_pixels=limit, notes=notes,
        )
        margin, rule = _own(row, "margin", spec.composite_margin), f"overlay region ({int(region.sum())} px)"
    else:
        threshold = _own(row, "threshold", spec.edit_threshold)
        guide, region = difference(load_image(row["original"], options, "original", limit),
                                   load_image(row["edited"], options, "edited", limit),
                                   mode=mode, threshold=threshold, notes=notes)
        margin = _own(row, "margin", spec.edit_margin)
        rule = f"{int(region.sum())} px differ by more than {threshold}"
        if not region.any() and not row["mask"]:
            raise ItemError("bad stroke edit", "no difference between original and edited (no pixel differs "
                            f"by more than {threshold}, the row's threshold or input.edit_threshold)")
    pixels = guide_pixels(guide, working, notes)
    if row["mask"]:
        notes.append("edit mask: the row's mask (it wins over the derived one)")
        return pixels, mask_bits(load_image(row["mask"], options, "mask", limit), guide.size, working, notes)
    if row["workflow"] == "composite" and spec.composite_mask == "whole":
        notes.append("edit mask: whole image (input.composite_mask=whole)")
        return pixels, None
    notes.append(f"edit mask: {rule}, grown {margin} px")
    return pixels, grow(fit_region(region, working.height, working.width, working.fit), margin)


def _own(row: Mapping[str, Any], name: str, default: int) -> int:
    """A row's own ``margin`` / ``threshold`` (manifest column), else the job's."""
    value = row.get(name)
    return default if value is None else int(value)


def record_inputs(shard: str | None, item_id: str, pixels: np.ndarray, bits: np.ndarray | None, out_uri: str,
                  out_options: Mapping[str, Any]) -> tuple[str, str | None]:
    """Publish a built guide and mask as PNG under ``OUT/inputs/``; their paths relative to OUT.

    Written once per item (decode sees an item once, whatever its number of samples), atomically,
    with the exact pixels the sampler gets.
    """
    fs, root = url_to_fs(out_uri, out_options)
    guide_rel = input_relpath(shard, item_id, "guide")
    write_atomic(fs, join_uri(root, guide_rel), encode_image(pixels, "png", 100))
    if bits is None:
        return guide_rel, None
    mask_rel = input_relpath(shard, item_id, "mask")
    write_atomic(fs, join_uri(root, mask_rel), encode_image(bits[..., None] * 255, "png", 100))
    return guide_rel, mask_rel
