"""Image files <-> pixels: read and decode safely, bring any mode to L or RGB, fit to the working
size, binarise masks, encode outputs. Plain functions used by decode, compose, write and the sheets.

Every failure to read or decode an input raises :class:`pipeline.errors.ItemError` naming what
(guide, mask, base...) and why; conversions that change what the user gave are appended to ``notes``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ItemError
from pipeline.redact import redact_text, strip_userinfo
from pipeline.storage import FileTooLargeError, read_bytes

MODES = {1: "L", 3: "RGB"}
DEFAULT_MAX_PIXELS = 50_000_000
BYTES_PER_PIXEL = 8  # the most an uncompressed image format stores per pixel (16-bit RGBA)
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_REFUSED_MODES = {"F": "32-bit float pixels have no defined range", "LAB": "Lab colour has no conversion here"}


@dataclass(frozen=True)
class WorkingSize:
    """The pixels the model works on (channels, height, width) and how inputs are fitted to them
    (``fit``: input.fit, one of resize, center_crop, pad)."""

    channels: int
    height: int
    width: int
    fit: str = "resize"


def fit_image(img: Image.Image, height: int, width: int, fit: str, resample: int) -> Image.Image:
    """Fit ``img`` to (height, width) as input.fit says: resize, center_crop or pad."""
    w, h = img.size
    if (w, h) == (width, height):
        return img
    if fit == "resize":
        return img.resize((width, height), resample)
    if fit == "center_crop":
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
    """Read and decode one image; raises :class:`ItemError` (missing / unreadable / bad ``what``).

    A file is never read beyond
    what an image within the limit can take (:data:`BYTES_PER_PIXEL` per pixel, uncompressed 16-bit
    RGBA, plus 1 MiB of headers): a multi-gigabyte file is refused from its size, unread.
    """
    shown = strip_userinfo(uri)
    max_bytes = max_pixels * BYTES_PER_PIXEL + 2**20
    try:
        data = read_bytes(uri, options, limit=max_bytes)
    except FileTooLargeError as e:
        raise ItemError(f"bad {what}", f"{shown}: {e}, more than an image of input.max_pixels={max_pixels} "
                        "pixels can take") from None
    except FileNotFoundError:
        raise ItemError(f"missing {what}", f"{shown} not found") from None
    except Exception as e:  # noqa: BLE001 - any storage failure is this item's failure
        raise ItemError(f"unreadable {what}", f"{shown}: {type(e).__name__}: {short_reason(e)}") from None
    return open_image(data, shown, what, max_pixels)


def open_image(data: bytes, shown: str, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one image's file bytes (``shown`` names them in errors); raises :class:`ItemError`.

    The pixel count is checked from the header, before any pixel is decoded: a small file that
    claims a huge image (a decompression bomb) never reaches memory.
    """
    if not data:
        raise ItemError(f"bad {what}", f"{shown}: empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise ItemError(f"bad {what}", f"{shown}: {w}x{h} = {w * h} pixels, over the limit "
                            f"input.max_pixels={max_pixels} (decompression bomb?)")
        img.load()
        return ImageOps.exif_transpose(img)
    except ItemError:
        raise
    except Image.DecompressionBombError as e:
        raise ItemError(f"bad {what}", f"{shown}: over Pillow's pixel limit (decompression bomb?): "
                        f"{short_reason(e)}") from None
    except (ValueError, UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ItemError(f"bad {what}", f"{shown}: cannot decode image ({type(e).__name__}: {short_reason(e)})"
                        ) from None


def short_reason(e: BaseException) -> str:
    """An exception's first line, cut and with credentials redacted: safe for an error row."""
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
        raise ItemError(f"bad {what}", f"mode {mode} refused: {_REFUSED_MODES[mode]}")
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(img, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ItemError(f"bad {what}", f"mode {mode} refused: values outside 0..65535")
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
        raise ItemError(f"bad {what}", f"mode {mode} refused: {short_reason(e)}") from None
    if mode not in ("P", "1"):
        notes.append(f"{what} {mode} converted to RGB" + (" (no colour management)" if mode == "CMYK" else ""))
    return converted


def guide_pixels(img: Image.Image, working: WorkingSize, notes: list[str] | None = None) -> np.ndarray:
    """uint8 [H, W, C] guide in the model's channel count, fitted to the working size."""
    notes = [] if notes is None else notes
    standard = to_standard_mode(img, "guide", notes)
    target = MODES[working.channels]
    if standard.mode == "RGB" and target == "L":
        notes.append("guide RGB converted to L")
    converted = standard.convert(target)
    if converted.size != (working.width, working.height):
        notes.append(f"guide {converted.size[0]}x{converted.size[1]} fitted to "
                     f"{working.width}x{working.height} by {working.fit}")
    fitted = fit_image(converted, working.height, working.width, working.fit, Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8).reshape(working.height, working.width, working.channels)


def mask_bits(mask: Image.Image, guide_size: tuple[int, int], working: WorkingSize,
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
    fitted = fit_image(grey, working.height, working.width, working.fit, Image.Resampling.NEAREST)
    return (np.asarray(fitted, dtype=np.uint8) >= 128).astype(np.uint8)


def encode_image(pixels: np.ndarray, image_format: str, quality: int) -> bytes:
    """uint8 [H, W, C] -> file bytes. PNG is lossless; JPEG / WebP use ``quality``."""
    img = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    if image_format == "webp" and img.mode == "L":
        img = img.convert("RGB")  # WebP has no grey mode
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = {} if image_format == "png" else {"quality": quality}
    img.save(buffer, format=PIL_FORMATS[image_format], **kwargs)
    return buffer.getvalue()
