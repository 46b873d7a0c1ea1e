"""Checkpoints in the ecosystem's format: both layouts, both weight formats, local or fsspec; never code."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import DDPM_CONFIG, save_checkpoint, tiny_unet

from sdedit_kernel import VESDE, VPSDE, CheckpointError, load_score_model, sdedit

VE_CONFIG = {"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000, "sigma_min": 0.01,
             "sigma_max": 348.0, "snr": 0.075, "sampling_eps": 1e-5}


@pytest.mark.parametrize("layout", ["flat", "pipeline"])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_round_trip(tmp_path, layout, weights):
    net = tiny_unet(channels=3, seed=1)
    root = save_checkpoint(tmp_path / "ckpt", net, DDPM_CONFIG, layout=layout, weights=weights)
    model = load_score_model(root)
    assert isinstance(model.sde, VPSDE) and model.prediction == "epsilon"
    assert model.data_range == (-1.0, 1.0) and model.channels == 3 and model.sample_size == 16
    assert len(model.digest) == 64 and model.source.endswith("ckpt")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        assert torch.equal(model.net(x, t).sample, net(x, t).sample)
    out = sdedit(model, torch.rand(1, 3, 16, 16), t0=0.05, steps=2)
    assert out.shape == (1, 3, 16, 16)


def test_ve_checkpoint_gives_vesde_in_unit_range(tmp_path):
    net = tiny_unet(channels=3, time_embedding_type="fourier", flip_sin_to_cos=True)
    model = load_score_model(save_checkpoint(tmp_path / "ve", net, VE_CONFIG))
    assert model.sde == VESDE(0.01, 348.0, 2000)
    assert model.prediction == "score" and model.data_range == (0.0, 1.0)
    out = sdedit(model, torch.rand(1, 3, 16, 16), t0=0.2, steps=3, sampler="pc")
    assert torch.isfinite(out).all()


def test_other_schedules_and_predictions(tmp_path):
    cfg = dict(DDPM_CONFIG, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
               _class_name="DDIMScheduler")
    model = load_score_model(save_checkpoint(tmp_path / "c", tiny_unet(), cfg))
    assert model.prediction == "v_prediction"
    assert model.sde.marginal(1.0)[0] < 0.01


def test_fsspec_uri(tmp_path):
    import fsspec

    root = save_checkpoint(tmp_path / "local", tiny_unet(), DDPM_CONFIG)
    fs = fsspec.filesystem("memory")
    for name in os.listdir(root):
        fs.pipe(f"/ckpts/m/{name}", open(os.path.join(root, name), "rb").read())
    model = load_score_model("memory://ckpts/m")
    assert model.channels == 1 and model.digest == load_score_model(root).digest


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sdedit_pwned_marker",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = "/tmp/sdedit_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    root = save_checkpoint(tmp_path / "evil", tiny_unet(), DDPM_CONFIG, weights="bin")
    with open(os.path.join(root, "diffusion_pytorch_model.bin"), "wb") as f:
        pickle.dump({"conv_in.weight": _Boom()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_score_model(root)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: os.remove(os.path.join(r, "scheduler_config.json")), "scheduler_config.json: missing"),
    (lambda r: os.remove(os.path.join(r, "diffusion_pytorch_model.safetensors")), "no weights"),
    (lambda r: os.remove(os.path.join(r, "config.json")), "neither config.json"),
    (lambda r: _edit(r, "scheduler_config.json", _class_name="FancyScheduler"), "FancyScheduler"),
    (lambda r: _edit(r, "scheduler_config.json", beta_schedule="sigmoid"), "beta_schedule 'sigmoid'"),
    (lambda r: _edit(r, "scheduler_config.json", beta_start=0.5, beta_end=0.1), "beta_start"),
    (lambda r: _edit(r, "scheduler_config.json", num_train_timesteps="many"), "num_train_timesteps"),
    (lambda r: _edit(r, "scheduler_config.json", prediction_type="noise"), "prediction_type"),
    (lambda r: _edit(r, "config.json", block_out_channels=[8, 32]), "do not match config.json"),
    (lambda r: _edit(r, "config.json", _class_name="UNet2DConditionModel"), "only UNet2DModel"),
    (lambda r: open(os.path.join(r, "config.json"), "w").write("{not json"), "not valid JSON"),
])
def test_bad_checkpoints_name_the_file_and_field(tmp_path, mutate, match):
    root = save_checkpoint(tmp_path / "bad", tiny_unet(), DDPM_CONFIG)
    mutate(root)
    with pytest.raises(CheckpointError, match=match):
        load_score_model(root)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_score_model(tmp_path / "nope")


def _edit(root, name, **fields):
    path = os.path.join(root, name)
    cfg = json.load(open(path))
    cfg.update(fields)
    json.dump(cfg, open(path, "w"))


def test_import_pulls_no_pipeline_dependencies():
    code = ("import sys, sdedit_kernel; bad = [m for m in ('ray', 'pyarrow', 'fsspec', 'pydantic', 'pipeline') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
