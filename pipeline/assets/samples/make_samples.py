"""Regenerate the demo guides: stroke paintings of garments, and one masked stroke edit.

Usage: python pipeline/assets/samples/make_samples.py   (deterministic; writes next to itself)

Stroke paintings are drawn as flat shapes at 4x size, box-downsampled to 28x28 and quantised to a
few grey levels, as a person would paint them. The masked edit paints a dark stripe across a real
Fashion-MNIST test T-shirt (MIT licence) and marks only the stripe for regeneration.
"""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
S = 4  # drawing scale
LEVELS = np.array([0, 70, 140, 200, 250])
TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
TEST_LABELS = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (28 * S, 28 * S), 0)
    return img, ImageDraw.Draw(img)


def _p(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x * S, y * S) for x, y in points]


def _finish(img: Image.Image) -> Image.Image:
    small = img.filter(ImageFilter.GaussianBlur(S * 0.6)).resize((28, 28), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.float64)
    q = LEVELS[np.abs(a[..., None] - LEVELS).argmin(-1)]
    return Image.fromarray(q.astype(np.uint8))


def tshirt() -> Image.Image:
    img, d = _canvas()
    d.polygon(_p([(9, 3), (19, 3), (26, 8), (23, 12), (20, 10), (20, 26), (8, 26), (8, 10), (5, 12), (2, 8)]), 200)
    d.ellipse(_p([(11, 1), (17, 5)]), 0)
    return _finish(img)


def trouser() -> Image.Image:
    img, d = _canvas()
    d.polygon(_p([(9, 1), (19, 1), (20, 27), (16, 27), (14, 9), (12, 27), (8, 27)]), 140)
    d.rectangle(_p([(9, 1), (19, 3)]), 200)
    return _finish(img)


def bag() -> Image.Image:
    img, d = _canvas()
    d.arc(_p([(8, 2), (20, 16)]), 180, 360, fill=200, width=2 * S)
    d.rectangle(_p([(3, 9), (25, 25)]), 140)
    d.rectangle(_p([(3, 9), (25, 12)]), 200)
    return _finish(img)


def sneaker() -> Image.Image:
    img, d = _canvas()
    d.polygon(_p([(2, 20), (3, 12), (9, 11), (14, 14), (22, 16), (26, 19), (26, 22), (2, 22)]), 200)
    d.rectangle(_p([(2, 22), (26, 24)]), 250)
    d.line(_p([(9, 13), (13, 16)]), 70, width=S)
    return _finish(img)


def dress() -> Image.Image:
    img, d = _canvas()
    d.polygon(_p([(10, 2), (18, 2), (17, 10), (23, 27), (5, 27), (11, 10)]), 140)
    d.rectangle(_p([(10, 9), (18, 11)]), 200)
    return _finish(img)


def ankle_boot() -> Image.Image:
    img, d = _canvas()
    d.polygon(_p([(6, 4), (15, 4), (16, 15), (25, 19), (25, 24), (4, 24), (5, 14)]), 140)
    d.rectangle(_p([(4, 22), (25, 24)]), 70)
    d.rectangle(_p([(6, 4), (15, 6)]), 200)
    return _finish(img)


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def striped_tshirt() -> tuple[Image.Image, Image.Image]:
    """A real test T-shirt with a painted dark stripe; the mask marks the stripe (white = edit)."""
    images, labels = _read_idx(TEST_IMAGES), _read_idx(TEST_LABELS)
    candidates = images[np.flatnonzero(labels == 0)[:50]]
    photo = candidates[int(np.argmax([(c > 30).sum() * c[c > 30].mean() for c in candidates]))].copy()
    stripe = np.zeros((28, 28), bool)
    stripe[12:16, :] = True
    stripe &= photo > 30  # only on the garment
    guide = photo.copy()
    guide[stripe] = 40
    mask = np.zeros((28, 28), np.uint8)
    rows, cols = np.nonzero(stripe)
    mask[max(0, rows.min() - 1) : rows.max() + 2, max(0, cols.min() - 1) : cols.max() + 2] = 255
    return Image.fromarray(guide), Image.fromarray(mask)


def main() -> None:
    rows = []
    for name, draw in [("tshirt", tshirt), ("trouser", trouser), ("bag", bag), ("sneaker", sneaker),
                       ("dress", dress), ("ankle-boot", ankle_boot)]:
        draw().save(HERE / f"{name}.png")
        rows.append({"id": f"{name}-strokes", "guide": f"{name}.png", "mask": "", "t0": ""})
    guide, mask = striped_tshirt()
    guide.save(HERE / "tshirt-stripe.png")
    mask.save(HERE / "tshirt-stripe-mask.png")
    rows.append({"id": "tshirt-stripe-edit", "guide": "tshirt-stripe.png", "mask": "tshirt-stripe-mask.png",
                 "t0": "0.35"})
    with open(HERE / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "guide", "mask", "t0"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
