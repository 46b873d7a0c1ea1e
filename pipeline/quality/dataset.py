"""Fashion-MNIST read from Debian's dataset-fashion-mnist: the evaluation's test split, and the
training split for the scripts in training/ (which import this reader)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
# The names of labels 0 .. 9, in the data set's order (a class-conditional model's labels.json must agree).
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str = "test", root: Path | str = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 28, 28]` uint8 and labels `[N]` of split "train" or "test" (env FASHION_MNIST_ROOT)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} not found: install Debian's dataset-fashion-mnist "
                                "(apt-get install dataset-fashion-mnist) or set FASHION_MNIST_ROOT")
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    return images, _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
