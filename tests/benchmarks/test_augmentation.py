"""Issue 13's measurement scripts on tiny random models: benchmarks/augmentation.py (few-shot classification with
SDEdit variants) and benchmarks/conditional_quality.py (the conditional model's tables), so CI never needs the
trained checkpoint. The fast tests check the helpers; the slow ones run each script's --quick mode end to end
and check the files it writes: their structure, and that every number is finite."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline.quality.dataset import CLASSES, DEFAULT_ROOT  # noqa: E402

needs_data = pytest.mark.skipif(not DEFAULT_ROOT.exists(), reason="Fashion-MNIST not installed")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


aug = _load("augmentation")


def save_tiny_model(folder: Path, conditional: bool = True) -> Path:
    """A tiny random UNet2DModel at 28x28 (class-conditional: 10 classes + null label 10, labels.json), with the
    official DDPM schedule: the trained model's layout in miniature."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                layers_per_block=1, norm_num_groups=4,
                num_class_embeds=11 if conditional else None).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type="epsilon", variance_type="fixed_small", clip_sample=False).save_config(folder)
    if conditional:
        (folder / "labels.json").write_text(json.dumps({"names": list(CLASSES), "null_label": 10}))
    return folder


@pytest.fixture(scope="module")
def tiny_cond(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-cond"))


def _all_finite(obj, path="") -> list[str]:
    """Paths of the non-finite floats in a JSON object."""
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad += _all_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _all_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
    return bad


# -- fast: the helpers -----------------------------------------------------------------------------------
def test_variants_are_the_jobs_outputs_whatever_the_batch(tiny_cond):
    """Output k of item i comes from generator_for(seed, id, k), so batching changes nothing; labels and w reach
    the kernel."""
    import sdedit_kernel as sk

    model = sk.load_score_model(str(tiny_cond))
    images = torch.rand(3, 1, 28, 28)
    labels, ids = np.array([0, 7, 9]), ["train-1", "train-5", "train-9"]
    a = aug.make_variants(model, images, labels, ids, t0=0.4, k=2, seed=5, steps=2, guidance=2.0, batch_size=3)
    b = aug.make_variants(model, images, labels, ids, t0=0.4, k=2, seed=5, steps=2, guidance=2.0, batch_size=1)
    assert a.shape == (3, 2, 1, 28, 28)
    torch.testing.assert_close(a, b)
    one = sk.sdedit(model, images[1:2], t0=0.4, steps=2, sampler="dpmpp_2m_sde", labels=[7], guidance_scale=2.0,
                    generator=[sk.generator_for(5, "train-5", 1)])
    torch.testing.assert_close(a[1, 1], one[0])
    assert not torch.equal(a[:, 0], a[:, 1])  # the K variants differ


def test_pairwise_rms():
    v = torch.zeros(2, 3, 1, 2, 2)
    v[0, 1] = 1.0  # item 0: pairs (0,1)=1, (0,2)=0, (1,2)=1 -> mean 2/3; item 1: all equal -> 0
    np.testing.assert_allclose(aug.pairwise_rms(v), [2 / 3, 0.0])


def test_classic_augment_shapes_and_determinism():
    x = torch.rand(4, 1, 28, 28)
    a = aug.classic_augment(x, torch.Generator().manual_seed(0))
    b = aug.classic_augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1 + 1e-6


@needs_data
def test_few_shot_draw():
    from pipeline.quality.dataset import load_split

    _, y = load_split("train")
    idx = aug.few_shot(y, 3, seed=4)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    assert (np.bincount(y[idx], minlength=10) == 3).all()
    np.testing.assert_array_equal(idx, aug.few_shot(y, 3, seed=4))
    assert not np.array_equal(idx, aug.few_shot(y, 3, seed=5))


# -- slow: the scripts' quick modes end to end ----------------------------------------------------------------
@pytest.mark.slow
@needs_data
def test_augmentation_quick_end_to_end(tiny_cond, tmp_path):
    rc = aug.main(["--quick", "--model", str(tiny_cond), "--test-limit", "500", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "augmentation.json").read_text())
    assert not _all_finite(result)
    assert set(result["summary"]) == {"a", "b", "c", "d"} and set(result["gains"]) == {"c-a", "d-b"}
    assert len(result["seeds"]) == 2 and result["test_images"] == 500
    for s in result["seeds"]:
        assert all(0.0 <= s["accuracy"][c] <= 1.0 for c in "abcd")
    for c in "abcd":
        assert math.isfinite(result["summary"][c]["mean"]) and math.isfinite(result["summary"][c]["se"])
    for g in result["gains"].values():
        assert isinstance(g["exceeds_2se"], bool) and math.isfinite(g["se"])
    # 2 seeds x 100 images x K 2 x 2 steps, guided (w = 2): both halves in one call
    assert result["image_calls"] == 2 * 100 * 2 * 2 * 2
    assert result["settings"]["seeds"] == 2 and result["settings"]["guidance"] == 2.0
    md = (tmp_path / "augmentation.md").read_text()
    assert "| (d) originals + SDEdit variants + classic augmentation |" in md and "exceeds 2 SE?" in md


@pytest.mark.slow
@needs_data
def test_conditional_quality_quick_end_to_end(tiny_cond, tmp_path):
    cq = _load("conditional_quality")
    base = save_tiny_model(tmp_path / "base", conditional=False)
    rc = cq.main(["--quick", "--model", str(tiny_cond), "--baseline", str(base), "--n", "8", "--n-aug", "4",
                  "--kid-ref", "20", "--steps", "2", "--sample-steps", "2", "--guidance", "1", "2",
                  "--t0", "0.3", "0.6", "--out", str(tmp_path / "out")])
    assert rc == 0
    result = json.loads((tmp_path / "out" / "conditional_quality.json").read_text())
    rows = result["rows"]
    assert [r["table"] for r in rows] == ["ref"] * 2 + ["a"] * 6 + ["b"] * 3 + ["c"] * 3
    a = [(r["model"], r["label"], r["guidance"], r["t0"]) for r in rows if r["table"] == "a"]
    assert a[:3] == [("unconditional (bundled)", "none", 1.0, 0.3), ("conditional", "source", 1.0, 0.3),
                     ("conditional", "source", 2.0, 0.3)]
    for r in rows:
        assert not r.get("error")
        assert all(math.isfinite(r[k]) for k in ("kid", "kid_se", "l2", "class_kept"))
    b = [r for r in rows if r["table"] == "b"]
    assert all(r["n"] == 4 * 2 and r["diversity"] > 0 for r in b[1:])
    assert not _all_finite(result)
    rec = result["recommendation"]
    assert rec["guidance"] in (1.0, 2.0) and rec["aug_t0"] in (0.3, 0.6)
    assert "benchmarks/augmentation.py" in rec["augmentation_command"]
    assert result["card"]["judged_class"] == rows[-1]["class_kept"]
    # (a) 8 guides x 2 t0 x 2 steps x (1 + 1 + 2); (b) 4 x K 2 x 2 t0 x 2 steps x (2 if guided);
    # (c) 8 x 2 steps x (1 + 1 + (2 if guided))
    g_aug, g_rec = (2 if rec[k] != 1 else 1 for k in ("aug_guidance", "guidance"))
    assert result["image_calls"] == 8 * 2 * 2 * 4 + 4 * 2 * 2 * 2 * g_aug + 8 * 2 * (2 + g_rec)
    md = (tmp_path / "out" / "conditional_quality.md").read_text()
    for heading in ("## (a) Stroke guides", "## (b) Real test images", "## (c) The model card's figures"):
        assert heading in md
