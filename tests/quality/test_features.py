"""The shipped feature classifier loads, has the card's accuracy, and gives KID-ready features."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from pipeline.quality.dataset import DEFAULT_ROOT, load_split
from pipeline.quality.features import (
    CONFIG_NAME,
    DEFAULT_CLASSIFIER_DIR,
    WEIGHTS_NAME,
    FashionClassifier,
    extract_features,
    load_classifier,
    save_classifier,
)


def test_shipped_files_and_card():
    weights = DEFAULT_CLASSIFIER_DIR / WEIGHTS_NAME
    assert weights.stat().st_size <= 2_000_000
    config = json.loads((DEFAULT_CLASSIFIER_DIR / CONFIG_NAME).read_text())
    card = (DEFAULT_CLASSIFIER_DIR / "CARD.md").read_text()
    stated = re.search(r"Test-split accuracy: ([0-9.]+)%", card)  # measured below, on part of the split
    assert stated and float(stated.group(1)) == pytest.approx(100 * config["test_accuracy"], abs=0.005)
    # not config.json: that would list the classifier as a bundled score model
    assert not (DEFAULT_CLASSIFIER_DIR / "config.json").exists()


def test_loads_and_gives_features_and_logits():
    model = load_classifier()
    assert not model.training
    x = torch.rand(5, 1, 28, 28)
    with torch.inference_mode():
        assert model(x).shape == (5, 10)
        assert model.features(x).shape == (5, model.config["feature_dim"])
    f = extract_features(model, (x * 255).to(torch.uint8)[:, 0])
    assert f.shape == (5, model.config["feature_dim"]) and f.dtype == np.float64
    # the standardisation buffers were fitted (not the identity defaults)
    assert not torch.equal(model.feature_std, torch.ones_like(model.feature_std))


@pytest.mark.skipif(not DEFAULT_ROOT.exists(), reason="Fashion-MNIST not installed")
def test_accuracy_on_part_of_the_test_split():
    """The card's accuracy (10,000 test images) is what the shipped weights give, within the sampling
    error of 1,000 of them (4 binomial standard errors, 3.5 points); and at least 90%."""
    claimed = json.loads((DEFAULT_CLASSIFIER_DIR / CONFIG_NAME).read_text())["test_accuracy"]
    images, labels = load_split("test")
    model = load_classifier()
    n = 1000
    with torch.inference_mode():
        pred = model(torch.from_numpy(images[:n].copy()).float().div(255).unsqueeze(1)).argmax(1).numpy()
    measured = (pred == labels[:n]).mean()
    assert abs(measured - claimed) < 4 * np.sqrt(claimed * (1 - claimed) / n), (measured, claimed)
    assert measured >= 0.90
    # standardised features of real images are of order one, as the cubic kernel wants
    f = extract_features(model, images[:500])
    assert abs(f.mean()) < 0.3 and 0.5 < f.std() < 2.0


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = FashionClassifier(channels=(4, 8, 8), feature_dim=16).eval()
    model.fit_feature_stats(torch.rand(20, 1, 28, 28))
    save_classifier(model, tmp_path, {"test_accuracy": 0.1})
    again = load_classifier(tmp_path)
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    assert torch.equal(model.feature_mean, again.feature_mean)
