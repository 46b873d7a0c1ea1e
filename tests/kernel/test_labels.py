"""Class labels: labels.json in either layout, its validation, and every wrong label or guidance is a clear error."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import DDPM_CONFIG, save_checkpoint, tiny_unet

from sdedit_kernel import VPSDE, CheckpointError, ClassLabels, ScoreModel, SDEditError, load_score_model, sdedit

NAMES = ["cat", "dog", "owl"]


def checkpoint(tmp_path, labels: dict | None = None, *, layout: str = "flat", where: str = "unet", **config):
    config = {"num_class_embeds": 4, **config}
    root = save_checkpoint(tmp_path / "m", tiny_unet(**config), DDPM_CONFIG, layout=layout)
    if labels is not None:
        folder = os.path.join(root, "unet") if layout == "pipeline" and where == "unet" else root
        with open(os.path.join(folder, "labels.json"), "w") as f:
            json.dump(labels, f)
    return root


@pytest.mark.parametrize("layout,where", [("flat", "root"), ("pipeline", "unet"), ("pipeline", "root")])
def test_labels_json_in_either_layout(tmp_path, layout, where):
    model = load_score_model(checkpoint(tmp_path, {"names": NAMES, "null_label": 3}, layout=layout, where=where))
    assert (model.num_classes, model.label_names, model.null_label) == (4, tuple(NAMES), 3)


def test_unet_folder_labels_win_over_the_root(tmp_path):
    root = checkpoint(tmp_path, {"names": NAMES, "null_label": 3}, layout="pipeline")
    with open(os.path.join(root, "labels.json"), "w") as f:
        json.dump({"names": ["a"]}, f)
    assert load_score_model(root).label_names == tuple(NAMES)


def test_training_script_format(tmp_path):
    """What training/train_score_model.py --num-classes 10 writes: 11 embeddings, null label 10."""
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    model = load_score_model(checkpoint(tmp_path, {"names": names, "null_label": 10}, num_class_embeds=11))
    assert model.num_classes == 11 and model.null_label == 10 and model.resolve_label("Sneaker") == 7


def test_without_labels_json_labels_are_indices_without_a_null_label(tmp_path):
    model = load_score_model(checkpoint(tmp_path))
    assert (model.num_classes, model.label_names, model.null_label) == (4, None, None)
    guide = torch.rand(2, 1, 16, 16)
    assert sdedit(model, guide, t0=0.1, steps=2, labels=[3, 0]).shape == guide.shape
    with pytest.raises(SDEditError, match="no null label"):
        sdedit(model, guide, t0=0.1, steps=2)
    with pytest.raises(SDEditError, match="no null label"):
        sdedit(model, guide, t0=0.1, steps=2, labels=[0, None])
    with pytest.raises(SDEditError, match="guidance_scale != 1 .* no null label"):
        sdedit(model, guide, t0=0.1, steps=2, labels=[0, 1], guidance_scale=2.0)
    with pytest.raises(SDEditError, match="give an index"):
        model.resolve_label("cat")


def test_timestep_class_embedding(tmp_path):
    """Labels as numbers through the time projection; also with half-precision weights."""
    root = checkpoint(tmp_path, {"names": NAMES, "null_label": 3}, num_class_embeds=None, class_embed_type="timestep")
    model = load_score_model(root, dtype=torch.bfloat16)
    assert (model.num_classes, model.null_label) == (4, 3)
    out = sdedit(model, torch.rand(2, 1, 16, 16), t0=0.1, steps=2, labels=["owl", 1], guidance_scale=2.0)
    assert torch.isfinite(out).all()
    os.remove(os.path.join(root, "labels.json"))
    with pytest.raises(CheckpointError, match=r"config\.json: class_embed_type 'timestep' without num_class_embeds"):
        load_score_model(root)


@pytest.mark.parametrize("labels,match", [
    ({"names": "cat"}, "field names must be a list"),
    ({"names": ["a", "b", "c", "d", "e"]}, "field names lists 5 classes, the network has 4"),
    ({"names": ["a", "a"]}, r"field names repeats \['a'\]"),
    ({"names": ["a", ""]}, "field names must be a list of non-empty strings"),
    ({"null_label": 4}, "field null_label 4 is out of range"),
    ({"null_label": -1}, "field null_label -1 is out of range"),
    ({"names": NAMES, "null_label": 1}, "field null_label 1 is the index of the named class 'dog'"),
    ({"null_label": "3"}, "field null_label must be an integer"),
    ({"null_label": True}, "field null_label must be an integer"),
    ({"null_labels": 3}, r"unknown field\(s\) \['null_labels'\]"),
    (["cat"], "expected a JSON object"),
])
def test_bad_labels_json_names_the_file_and_field(tmp_path, labels, match):
    with pytest.raises(CheckpointError, match=r"labels\.json: .*" + match):
        load_score_model(checkpoint(tmp_path, labels))


@pytest.mark.parametrize("config,labels,match", [
    ({"class_embed_type": "identity"}, None, r"config\.json: field class_embed_type 'identity' is not supported"),
    ({"num_class_embeds": 0}, None, r"config\.json: field num_class_embeds must be an integer >= 1"),
    ({"num_class_embeds": None}, {"names": NAMES}, r"labels\.json: labels are given, but the network is not class"),
])
def test_bad_class_configs(tmp_path, config, labels, match):
    root = checkpoint(tmp_path, labels)
    path = os.path.join(root, "config.json")
    cfg = json.load(open(path))
    cfg.update(config)
    json.dump(cfg, open(path, "w"))
    with pytest.raises(CheckpointError, match=match):
        load_score_model(root)


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return ScoreModel(tiny_unet(num_class_embeds=4), VPSDE.linear(), classes=ClassLabels(4, tuple(NAMES), 3))


G = torch.rand(2, 1, 16, 16)


@pytest.mark.parametrize("kwargs,match", [
    ({"labels": ["bat", 0]}, r"unknown label 'bat'; give one of \['cat', 'dog', 'owl'\]"),
    ({"labels": [4, 0]}, "label 4 is out of range: this model has labels 0 .. 3"),
    ({"labels": [-1, 0]}, "label -1 is out of range"),
    ({"labels": [True, 0]}, "a label must be an integer index or a class name"),
    ({"labels": [0.0, 1]}, "a label must be an integer index or a class name"),
    ({"labels": torch.tensor([0.0, 1.0])}, r"labels must be an integer tensor \[B\] = \[2\]"),
    ({"labels": torch.tensor([[0, 1]])}, r"labels must be an integer tensor \[B\] = \[2\]"),
    ({"labels": [0]}, r"labels must give one label per item \(2\), got 1"),
    ({"labels": "cat"}, r"labels must give one label per item"),
    ({"labels": [0, 1], "guidance_scale": -1.0}, "guidance_scale must be finite and >= 0"),
    ({"labels": [0, 1], "guidance_scale": float("nan")}, "guidance_scale must be finite and >= 0"),
    ({"labels": [0, 1], "guidance_scale": torch.ones(3)}, r"guidance_scale must be a number or a tensor \[B\] = \[2\]"),
    ({"labels": [0, 1], "guidance_scale": True}, "guidance_scale must be a number"),
    ({"labels": [0, 1], "guidance_scale": "high"}, "guidance_scale must be a number"),
])
def test_bad_labels_and_guidance(model, kwargs, match):
    with pytest.raises(SDEditError, match=match):
        sdedit(model, G, t0=0.1, steps=1, **kwargs)


def test_labels_and_guidance_need_a_conditional_model(tiny_model):
    guide = torch.rand(1, 3, 16, 16)
    with pytest.raises(SDEditError, match="labels were given, but this model is not class-conditional"):
        sdedit(tiny_model, guide, t0=0.1, steps=1, labels=[0])
    with pytest.raises(SDEditError, match="guidance_scale != 1 needs a class-conditional model"):
        sdedit(tiny_model, guide, t0=0.1, steps=1, guidance_scale=3.0)
    with pytest.raises(SDEditError, match="not class-conditional"):
        tiny_model.resolve_label(0)
    assert (tiny_model.num_classes, tiny_model.label_names, tiny_model.null_label) == (None, None, None)
    assert tiny_model.bind(1) is tiny_model  # nothing to bind: the samplers see the model itself


def test_class_labels_checks(model):
    with pytest.raises(SDEditError, match="bind labels first"):
        model.predict(torch.randn(1, 1, 16, 16), 0.5)
    with pytest.raises(SDEditError, match="num_classes must be an integer >= 1"):
        ClassLabels(0)
    with pytest.raises(SDEditError, match="classes has 5 labels, the network's num_class_embeds is 4"):
        ScoreModel(tiny_unet(num_class_embeds=4), VPSDE.linear(), classes=ClassLabels(5))
    with pytest.raises(SDEditError, match="not class-conditional"):
        ScoreModel(tiny_unet(), VPSDE.linear(), classes=ClassLabels(3))
    derived = ScoreModel(tiny_unet(num_class_embeds=4), VPSDE.linear())  # from the config: indices, no null label
    assert (derived.num_classes, derived.label_names, derived.null_label) == (4, None, None)
