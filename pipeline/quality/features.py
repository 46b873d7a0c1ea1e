"""The realism feature extractor: a small Fashion-MNIST CNN whose penultimate layer feeds KID."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "models"
DEFAULT_CLASSIFIER_DIR = ASSETS / "fashion-mnist-classifier"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "classifier_config.json"  # not config.json: that marks a bundled score model

# Training-split pixel statistics (pixels in [0, 1]); fixed so features never depend on a batch.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


class FashionClassifier(nn.Module):
    """Three conv blocks and one hidden linear layer; `features(x)` is that hidden layer (after ReLU).

    Input: images `[B, 1, 28, 28]` with pixels in [0, 1] (the same range as SDEdit's outputs).
    """

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 64), feature_dim: int = 128,
                 num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.config = {"channels": list(channels), "feature_dim": feature_dim,
                       "num_classes": num_classes, "dropout": dropout}
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),   # 14x14
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c3 * 7 * 7, feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        # per-feature mean and std over the training split (set by `fit_feature_stats`): KID's cubic
        # kernel wants features of order one, as Inception's pooled features are
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations `[B, feature_dim]` for images in [0, 1]."""
        return self.body((x - PIXEL_MEAN) / PIXEL_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """Features shifted and scaled by the training split's per-feature mean and std."""
        return (features - self.feature_mean) / self.feature_std

    @torch.no_grad()
    def fit_feature_stats(self, images: torch.Tensor, batch_size: int = 1000, eps: float = 1e-3) -> None:
        """Set the standardisation from `images` (the training split), in eval mode."""
        was_training = self.training
        self.eval()
        f = torch.cat([self.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0) + eps)  # eps: a feature that never fires must not blow up
        self.train(was_training)


def save_classifier(model: FashionClassifier, out: Path | str, extra_config: dict | None = None) -> None:
    """Write `model.safetensors` and `classifier_config.json` (architecture, plus `extra_config`)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    config = {"architecture": "FashionClassifier", **model.config, **(extra_config or {})}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def load_classifier(path: Path | str | None = None, *, device: str = "cpu") -> FashionClassifier:
    """Load the shipped classifier (or one saved by `save_classifier` at `path`), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_CLASSIFIER_DIR
    config = json.loads((path / CONFIG_NAME).read_text())
    model = FashionClassifier(
        channels=tuple(config["channels"]), feature_dim=config["feature_dim"],
        num_classes=config["num_classes"], dropout=config["dropout"],
    )
    model.load_state_dict(load_file(str(path / WEIGHTS_NAME), device=device))
    return model.to(device).eval()


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 `[N, 28, 28]` / `[N, 1, 28, 28]`, or floats in [0, 1], to float `[N, 1, 28, 28]` in [0, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.unsqueeze(1) if x.ndim == 3 else x


@torch.inference_mode()
def extract_features(model: FashionClassifier, images: np.ndarray | torch.Tensor, *, standardise: bool = True,
                     batch_size: int = 500) -> np.ndarray:
    """Penultimate features of `images` (see `to_tensor`) as float64 `[N, D]`, standardised by default."""
    x = to_tensor(images)
    out = [model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    f = torch.cat(out)
    return (model.standardise(f) if standardise else f).double().numpy()
