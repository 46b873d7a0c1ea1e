"""`sdedit eval` with a class-conditional model: label modes, guidance rows, the conditional reference rows,
and a clear failure for `--label source` on an unconditional model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import sdedit_kernel as sk
from pipeline.quality.dataset import CLASSES, DEFAULT_ROOT
from pipeline.quality.harness import EvalConfig, Evaluator, build_eval_set, main

pytestmark = pytest.mark.skipif(not DEFAULT_ROOT.exists(), reason="Fashion-MNIST not installed")


def save_tiny_conditional(folder: Path, names: list[str] | None = None) -> Path:
    """A tiny random class-conditional UNet2DModel at 28x28 (10 classes + null label 10), as training writes it."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                layers_per_block=1, norm_num_groups=4, num_class_embeds=11).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type="epsilon", variance_type="fixed_small", clip_sample=False).save_config(folder)
    (folder / "labels.json").write_text(json.dumps({"names": names or list(CLASSES), "null_label": 10}))
    return folder


@pytest.fixture(scope="module")
def tiny_cond_dir(tmp_path_factory):
    return save_tiny_conditional(tmp_path_factory.mktemp("tiny-cond"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_conditional_rows_and_references(tiny_cond_dir, tmp_path):
    torch.set_num_threads(1)
    rc = main(["--model", str(tiny_cond_dir), "--n", "6", "--kid-ref", "12", "--sampler", "ddim", "--steps", "2",
               "--t0", "0.4", "--uncond-steps", "2", "--label", "none", "source", "--guidance", "1", "2",
               "--batch-size", "4", "--out", str(tmp_path), "--name", "c"])
    assert rc == 0
    rows = _rows(tmp_path / "c.csv")
    assert [r["name"] for r in rows[:5]] == [
        "reference: stroke guides", "reference: real test images", "reference: unconditional samples (null label)",
        "reference: conditional samples (w=1)", "reference: conditional samples (w=2)"]
    assert [(r["label"], float(r["guidance"])) for r in rows[2:5]] == [("none", 1.0), ("source", 1.0),
                                                                        ("source", 2.0)]
    # the none row ignores w: listed once; then source at w = 1 and 2
    assert [(r["label"], float(r["guidance"])) for r in rows[5:]] == [("none", 1.0), ("source", 1.0),
                                                                       ("source", 2.0)]
    for r in rows[2:]:
        assert not r["error"] and int(r["n"]) == 6 and float(r["kid_se"]) > 0
        # a guided row evaluates both halves in one call: twice the network images per output
        factor = 2 if float(r["guidance"]) != 1 else 1
        assert float(r["calls_counted"]) == factor * float(r["calls"])
    md = (tmp_path / "c.md").read_text()
    assert "| configuration | t0 | label | w | steps |" in md and "| sdedit ddim | 0.4 | source | 2 | 2 | 2 |" in md
    settings = json.loads((tmp_path / "c.json").read_text())["settings"]
    assert settings["model_classes"] == 11 and settings["null_label"] == 10


def test_source_labels_reach_the_kernel(tiny_cond_dir):
    model = sk.load_score_model(str(tiny_cond_dir))
    data = build_eval_set(5, 8, seed=1)
    ev = Evaluator(model, data, seed=3, batch_size=2, log=lambda *a: None)
    for label, w in (("source", 1.0), ("source", 2.5), ("none", 1.0)):
        cfg = EvalConfig("ddim", 0.5, 2, label=label, guidance=w)
        ev.run(cfg)
        got = ev.outputs[ev._resolve(cfg)]
        gens = [sk.generator_for(3, i, 0) for i in data.ids]
        labels = torch.as_tensor(data.labels) if label == "source" else [None] * 5
        want = sk.sdedit(model, data.guides, t0=0.5, steps=2, sampler="ddim", generator=gens, labels=labels,
                         guidance_scale=w)
        torch.testing.assert_close(got, want)
    # label none is the null label, whatever w was asked for
    assert ev._resolve(EvalConfig("ddim", 0.5, 2, label="none", guidance=3.0)).guidance == 1.0


def test_label_source_fails_clearly_on_an_unconditional_model(tiny_unet_dir, tmp_path):
    rc = main(["--model", str(tiny_unet_dir), "--n", "4", "--kid-ref", "8", "--sampler", "ddim", "--steps", "1",
               "--t0", "0.3", "--uncond-steps", "1", "--label", "none", "source", "--out", str(tmp_path)])
    assert rc == 1
    rows = _rows(tmp_path / "eval.csv")
    # no conditional reference rows for an unconditional model
    assert [r["name"] for r in rows[:3]] == ["reference: stroke guides", "reference: real test images",
                                             "reference: unconditional samples"]
    none, source = rows[3], rows[4]
    assert not none["error"] and none["label"] == "none"
    assert source["label"] == "source" and "needs a class-conditional model" in source["error"]
    assert "failed: ValueError: --label source needs a class-conditional model" in (tmp_path / "eval.md").read_text()


def test_guidance_on_an_unconditional_model_fails_clearly(tiny_unet_dir, tmp_path):
    rc = main(["--model", str(tiny_unet_dir), "--n", "4", "--kid-ref", "8", "--no-references", "--sampler", "ddim",
               "--steps", "1", "--t0", "0.3", "--label", "source", "--guidance", "2", "--out", str(tmp_path)])
    assert rc == 1
    assert "class-conditional" in _rows(tmp_path / "eval.csv")[0]["error"]


def test_classes_in_another_order_are_refused(tmp_path):
    folder = save_tiny_conditional(tmp_path / "m", names=list(reversed(CLASSES)))
    rc = main(["--model", str(folder), "--n", "4", "--kid-ref", "8", "--no-references", "--sampler", "ddim",
               "--steps", "1", "--t0", "0.3", "--label", "source", "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "not Fashion-MNIST's" in _rows(tmp_path / "o" / "eval.csv")[0]["error"]
