"""Fashion-MNIST for the training scripts: the package's reader (pipeline.quality.dataset) plus class names."""

from __future__ import annotations

from pipeline.quality.dataset import DEFAULT_ROOT, load_split

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

__all__ = ["CLASS_NAMES", "DEFAULT_ROOT", "load_split"]
