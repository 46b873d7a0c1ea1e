"""Latent, text-conditional jobs: a Stable Diffusion-style pipeline folder (tiny, random, built here)
through the whole job, on local disk and on S3 (moto); prompts, negative prompts, masks, notes, refusals."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.jobfile import SpecError, build_spec
from pipeline.preflight import preflight
from pipeline.run import run_job
from sdedit_kernel import generator_for, load_score_model, sdedit

pytest.importorskip("transformers")
_spec = importlib.util.spec_from_file_location(
    "latent_models", Path(__file__).resolve().parents[1] / "kernel" / "latent_models.py")
latent_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(latent_models)  # the kernel tests' tiny SD folder recipe
PIXELS = latent_models.PIXELS
LONG = " ".join(["word"] * 120)  # longer than the text encoder's window: truncated, with a note


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return latent_models.save_sd_folder(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def latent_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("latent-inputs")
    guides = latent_models.guides(3, seed=4)
    for i in range(3):
        pixels = (guides[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / f"g{i}.png")
    mask = np.zeros((PIXELS, PIXELS), np.uint8)
    mask[:, PIXELS // 2:] = 255  # regenerate the right half
    Image.fromarray(mask).save(root / "right.png")
    pd.DataFrame([
        {"id": "red", "guide": "g0.png", "mask": "", "prompt": "a red dress", "negative_prompt": "blurry"},
        {"id": "masked", "guide": "g1.png", "mask": "right.png", "prompt": "a coat", "negative_prompt": ""},
        {"id": "default", "guide": "g2.png", "mask": "", "prompt": "", "negative_prompt": ""},
        {"id": "long", "guide": "g2.png", "mask": "", "prompt": LONG, "negative_prompt": ""},
    ]).to_csv(root / "m.csv", index=False)
    return root


def _job(model: str, manifest: str, out: str, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "input": {"manifest": manifest}, "output": {"uri": out, "sheet_items": 4}, "model": {"uri": model},
        "sampling": {"t0": 0.5, "sampler": "ddim", "steps": 4, "guidance_scale": 3.0, "seed": 2,
                     "prompt": "a garment"},
        "resources": {"actors": 1, "batch_size": 4, "num_cpus": 0.5},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def test_preflight_reads_configs_and_refuses_what_the_model_cannot_take(sd_folder: Path, latent_inputs: Path,
                                                                         tiny_model: Path, tmp_path: Path) -> None:
    plan = preflight(build_spec(_job(str(sd_folder), str(latent_inputs / "m.csv"), str(tmp_path / "o"))))
    assert (plan.channels, plan.height, plan.width, plan.conditioning) == (3, PIXELS, PIXELS, "text")
    assert plan.label.startswith("tiny-sd@files:") and plan.steps == 4
    with pytest.raises(SpecError, match="input.manifest: .*has a prompt column, but .* is not text-conditional"):
        preflight(build_spec(_job(str(tiny_model), str(latent_inputs / "m.csv"), str(tmp_path / "o"),
                                  sampling={"prompt": None, "guidance_scale": 1.0})))
    with pytest.raises(SpecError, match="sampling.prompt: needs a text-conditional model"):
        preflight(build_spec(_job(str(tiny_model), str(tmp_path / "none.csv"), str(tmp_path / "o"),
                                  sampling={"guidance_scale": 1.0})))
    with pytest.raises(SpecError, match="input.image_size: 60x60: a latent model's working size must be a multiple"):
        preflight(build_spec(_job(str(sd_folder), str(latent_inputs / "m.csv"), str(tmp_path / "o"),
                                  input={"image_size": 60})))
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("id,guide,label\na,g.png,1\n")
    with pytest.raises(SpecError, match="has a label column, but .* is text-conditional"):
        preflight(build_spec(_job(str(sd_folder), str(labelled), str(tmp_path / "o"))))


def _check_outputs(out_index: pd.DataFrame, read: Any, model_dir: Path, guides: Path) -> None:
    ok = out_index.set_index("id")
    assert set(ok.status) == {"ok"} and len(ok) == 4
    assert ok.loc["red", "prompt"] == "a red dress" and ok.loc["red", "negative_prompt"] == "blurry"
    assert ok.loc["default", "prompt"] == "a garment"  # the job's prompt for a row without one
    assert pd.isna(ok.loc["default", "negative_prompt"]) and (ok.guidance_scale == 3.0).all()
    assert "truncated" in ok.loc["long", "notes"] and pd.isna(ok.loc["red", "notes"])
    # Kept pixels are the guide's own (composited after decoding), bit for bit.
    masked = np.asarray(Image.open(io.BytesIO(read(ok.loc["masked", "image"]))))
    guide = np.asarray(Image.open(guides / "g1.png"))
    assert (masked[:, : PIXELS // 2] == guide[:, : PIXELS // 2]).all()
    assert not (masked[:, PIXELS // 2:] == guide[:, PIXELS // 2:]).all()
    # A notebook reproduces any output: the kernel call with the row's prompt and generator.
    model = load_score_model(str(model_dir))
    pixels = torch.from_numpy(np.asarray(Image.open(guides / "g0.png")).copy()).permute(2, 0, 1)[None].float() / 255
    alone = sdedit(model, pixels, t0=0.5, steps=4, sampler="ddim", prompts=["a red dress"],
                   negative_prompts=["blurry"], guidance_scale=3.0, generator=[generator_for(2, "red", 0)])
    expected = alone[0].permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    got = np.asarray(Image.open(io.BytesIO(read(ok.loc["red", "image"]))))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # uint8 rounding of one float ulp at most


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_latent_job_end_to_end_on_local_disk(sd_folder: Path, latent_inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_job(build_spec(_job(str(sd_folder), str(latent_inputs / "m.csv"), str(out))))
    assert summary.exit_code == 0
    index = pd.read_parquet(out / "index")
    assert index.model.str.match(r"^tiny-sd@sha256:[0-9a-f]{64}$").all()  # the actors' content digest
    _check_outputs(index, lambda rel: (out / rel).read_bytes(), sd_folder, latent_inputs)
    assert (out / "sheet.png").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_latent_job_with_model_inputs_and_outputs_on_s3(s3: tuple[Any, dict[str, str], str], sd_folder: Path,
                                                        latent_inputs: Path) -> None:
    fs, options, bucket = s3
    fs.put(str(sd_folder), f"{bucket}/models/tiny-sd", recursive=True)
    fs.put(str(latent_inputs), f"{bucket}/data", recursive=True)
    out = f"s3://{bucket}/out"
    data = _job(f"s3://{bucket}/models/tiny-sd", f"s3://{bucket}/data/m.csv", out)
    data["storage_options"] = options
    summary = run_job(build_spec(data))
    assert summary.exit_code == 0
    fs.invalidate_cache()
    index = pd.concat(pd.read_parquet(io.BytesIO(fs.cat(k))) for k in fs.find(f"{bucket}/out/index"))
    _check_outputs(index, lambda rel: fs.cat(f"{bucket}/out/{rel}"), sd_folder, latent_inputs)
