"""Regenerate the editing-workflow samples: composites (composite/) and stroke edits (stroke_edit/).

Usage: python pipeline/assets/samples/make_workflow_samples.py   (deterministic; writes next to itself)

Both start from real Fashion-MNIST test images (MIT licence, Debian's dataset-fashion-mnist, read by
pipeline.quality.dataset). Composites paste a piece on a garment: a piece cut from another garment
(its alpha: where that garment is), or a small painted patch. Stroke edits paint a few flat grey
strokes on a copy of the image, as a person would; the pipeline finds them by difference.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.quality.dataset import load_split

HERE = Path(__file__).resolve().parent
TSHIRT, TROUSER, PULLOVER, DRESS, COAT, SANDAL, SHIRT, SNEAKER, BAG, BOOT = range(10)


def _pick(images: np.ndarray, labels: np.ndarray, label: int, rank: int = 0) -> np.ndarray:
    """The ``rank``-th most solid image of a class among its first 50 (clear shapes edit best)."""
    candidates = images[np.flatnonzero(labels == label)[:50]]
    order = np.argsort([-(c > 30).sum() * c[c > 30].mean() for c in candidates])
    return candidates[order[rank]].copy()


def _rgba(grey: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha.astype(np.uint8))))


def composites(images: np.ndarray, labels: np.ndarray, folder: Path) -> list[dict[str, object]]:
    folder.mkdir(exist_ok=True)
    rows: list[dict[str, object]] = []

    def save(name: str, img: Image.Image | np.ndarray) -> str:
        (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(folder / name)
        return name

    # A sneaker with the shaft of an ankle boot pasted on: the alpha is where the boot is.
    boot = _pick(images, labels, BOOT)
    shaft = boot[0:16, 4:18]
    rows.append({"id": "sneaker-plus-boot-shaft", "base": save("sneaker.png", _pick(images, labels, SNEAKER)),
                 "overlay": save("boot-shaft.png", _rgba(shaft, (shaft > 25) * 255)), "x": 6, "y": 2})
    # A T-shirt with a dark round patch (a logo) painted at 3x and pasted at scale 1/3, centred.
    disc = Image.new("LA", (30, 30), (0, 0))
    ImageDraw.Draw(disc).ellipse((2, 2, 27, 27), fill=(35, 255))
    rows.append({"id": "tshirt-plus-logo", "base": save("tshirt.png", _pick(images, labels, TSHIRT)),
                 "overlay": save("logo.png", disc), "scale": 1 / 3})
    # A bag with a bright label; an overlay_mask (not alpha) says which of its pixels are pasted.
    label = np.full((8, 10), 245, np.uint8)
    label[2:6, 2:8] = 50
    cover = np.zeros((8, 10), np.uint8)
    cover[1:7, :] = 255
    rows.append({"id": "bag-plus-label", "base": save("bag.png", _pick(images, labels, BAG)),
                 "overlay": save("label.png", label), "overlay_mask": save("label-mask.png", cover),
                 "x": 0.3, "y": 12})
    # A dress whose lower half is a coat's: pasted at a fraction of the width, bottom rows clipped.
    coat = _pick(images, labels, COAT)
    hem = coat[14:28, 4:24]
    rows.append({"id": "dress-plus-coat-hem", "base": save("dress.png", _pick(images, labels, DRESS)),
                 "overlay": save("coat-hem.png", _rgba(hem, (hem > 25) * 255)), "x": 4, "y": 16})
    return rows


def stroke_edits(images: np.ndarray, labels: np.ndarray, folder: Path) -> list[dict[str, object]]:
    folder.mkdir(exist_ok=True)
    rows: list[dict[str, object]] = []

    def edit(name: str, original: np.ndarray, edited: np.ndarray, t0: float | None = None) -> None:
        Image.fromarray(original).save(folder / f"{name}.png")
        Image.fromarray(edited).save(folder / f"{name}-edited.png")
        rows.append({"id": f"{name}-strokes", "original": f"{name}.png", "edited": f"{name}-edited.png", "t0": t0})

    # Long sleeves painted onto a T-shirt.
    tshirt = _pick(images, labels, TSHIRT, 1)
    edit("tshirt", tshirt, _paint(tshirt, [("line", (4, 9, 1, 24), 170), ("line", (23, 9, 26, 24), 170)]))
    # A high top painted onto a sneaker: an ankle boot (a bigger change: a higher t0 for this row).
    sneaker = _pick(images, labels, SNEAKER, 1)
    edit("sneaker", sneaker, _paint(sneaker, [("rect", (4, 4, 14, 16), 110)]), t0=0.6)
    # A dark belt across a dress.
    dress = _pick(images, labels, DRESS, 1)
    edit("dress", dress, _paint(dress, [("rect", (8, 11, 19, 12), 40)]))
    # A sandal closed: the gaps between its straps painted over in one grey.
    sandal = images[np.flatnonzero(labels == SANDAL)[1]].copy()
    ys, xs = np.nonzero(sandal > 30)
    painted = sandal.copy()
    box = painted[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    box[box <= 30] = 150
    edit("sandal", sandal, painted)
    return rows


def _paint(original: np.ndarray, strokes: list[tuple[str, tuple[int, ...], int]]) -> np.ndarray:
    """Flat grey rectangles and 2-pixel lines painted on a copy, as in a paint program."""
    painted = Image.fromarray(original)
    draw = ImageDraw.Draw(painted)
    for shape, box, grey in strokes:
        if shape == "rect":
            draw.rectangle(box, fill=grey)
        else:
            draw.line(box, fill=grey, width=2)
    return np.asarray(painted)


def _write_manifest(path: Path, rows: list[dict[str, object]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: _cell(row.get(k)) for k in fields} for row in rows])


def _cell(value: object) -> object:
    return "" if value is None else round(value, 6) if isinstance(value, float) else value


def main() -> None:
    images, labels = load_split("test")
    _write_manifest(HERE / "composite" / "manifest.csv", composites(images, labels, HERE / "composite"))
    _write_manifest(HERE / "stroke_edit" / "manifest.csv", stroke_edits(images, labels, HERE / "stroke_edit"))


if __name__ == "__main__":
    main()
