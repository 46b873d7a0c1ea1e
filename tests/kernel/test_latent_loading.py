"""Latent pipeline folders (SD 1.x/2.x) load through load_score_model as the libraries load them;
read_model_config reads configs only; .bin never runs code; unsupported families are refused by name.
(Memory and the remote cache: test_latent_cache.py.)"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_unet
from latent_models import PIXELS, guides, save_sd_folder

from sdedit_kernel import (
    CheckpointError,
    LatentScoreModel,
    SDEditError,
    load_score_model,
    read_model_config,
    sdedit,
)

pytestmark = pytest.mark.usefixtures("private_sdedit_cache")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory) -> Path:
    return save_sd_folder(tmp_path_factory.mktemp("sd2") / "m", "sd2", seed=2)


def _diffusers_parts(root: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return (UNet2DConditionModel.from_pretrained(root / "unet"), AutoencoderKL.from_pretrained(root / "vae"),
            CLIPTextModel.from_pretrained(root / "text_encoder"))


@pytest.mark.parametrize("kind,prediction", [("sd1", "epsilon"), ("sd2", "v_prediction")])
def test_sd1_and_sd2_folders_load_as_the_libraries_load_them(request, kind, prediction):
    root = request.getfixturevalue(kind)
    model = load_score_model(root)
    assert isinstance(model, LatentScoreModel) and model.prediction == prediction
    assert (model.channels, model.sample_size, model.latent_channels, model.vae_scale_factor) == (3, PIXELS, 4, 8)
    assert model.scaling_factor == 0.18215 and model.conditioning == "text" and model.text.max_length == 77
    assert len(model.digest) == 64 and model.source == str(root)
    tensors = [*model.net.parameters(), *model.vae.parameters(), *model.text.model.parameters(),
               *model.text.model.buffers()]
    assert not any(t.is_meta for t in tensors)
    unet, vae, text = _diffusers_parts(root)
    x, t, ids = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randint(0, 500, (2, 77))
    with torch.no_grad():
        states = text(ids)[0]
        assert torch.equal(model.text.model(ids)[0], states)
        assert torch.equal(model.net(x, t, encoder_hidden_states=states).sample,
                           unet(x, t, encoder_hidden_states=states).sample)
        assert torch.equal(model.vae.decode(x).sample, vae.decode(x).sample)
    out = sdedit(model, guides(1), t0=0.4, steps=2, sampler="ddim", prompts=["a cat"], guidance_scale=5.0)
    assert out.shape == (1, 3, PIXELS, PIXELS) and torch.isfinite(out).all()


def test_read_model_config_reads_no_weights(sd1, tmp_path, tiny_checkpoint):
    root = tmp_path / "configs-only"
    shutil.copytree(sd1, root)
    for rel in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors"):
        (root / rel).write_bytes(b"not weights")  # present, unreadable: only their existence is asked
    cfg = read_model_config(root)
    assert (cfg.kind, cfg.channels, cfg.sample_size, cfg.conditioning, cfg.prediction) == (
        "latent", 3, PIXELS, "text", "epsilon")
    assert (cfg.latent_channels, cfg.vae_scale_factor, cfg.scaling_factor, cfg.max_prompt_tokens) == (4, 8, 0.18215, 77)
    assert cfg.weights == ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                           "vae/diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_score_model(root)
    pixel = read_model_config(tiny_checkpoint)
    assert (pixel.kind, pixel.channels, pixel.sample_size, pixel.conditioning, pixel.latent) == (
        "pixel", 1, 16, None, False)


def test_sd2_config(sd2):
    cfg = read_model_config(sd2)
    assert cfg.prediction == "v_prediction" and cfg.sde == "VPSDE" and cfg.num_train_timesteps == 1000


def test_bin_weights_load_and_code_in_them_never_runs(tmp_path):
    root = save_sd_folder(tmp_path / "bin", "sd1", seed=4, safe=False)
    assert (root / "unet/diffusion_pytorch_model.bin").exists()
    model = load_score_model(root)
    assert model.digest and not any(p.is_meta for p in model.net.parameters())

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    with open(root / "vae/diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"encoder.conv_in.weight": Boom()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_score_model(root)
    assert not (tmp_path / "pwned").exists()


def test_variant_weights(sd1, tmp_path):
    root = tmp_path / "variant"
    shutil.copytree(sd1, root)
    for rel in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"):
        os.rename(root / f"{rel}.safetensors", root / f"{rel}.fp16.safetensors")
    with pytest.raises(CheckpointError, match="no weights"):
        load_score_model(root)
    assert load_score_model(root, variant="fp16").digest != load_score_model(sd1).digest  # other file names


def test_unconditional_latent_unet(tmp_path):
    """A UNet2DModel in an AutoencoderKL's latent space (no text encoder) loads too; prompts are refused."""
    sd = save_sd_folder(tmp_path / "sd", "sd1")
    root = tmp_path / "ldm"
    root.mkdir()
    for name in ("vae", "scheduler"):
        shutil.copytree(sd / name, root / name)
    tiny_unet(channels=4, size=8, seed=3).save_pretrained(root / "unet")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"]}))
    model = load_score_model(root)
    assert model.conditioning is None and model.text is None and read_model_config(root).conditioning is None
    g = guides(2)
    two = [torch.Generator().manual_seed(i) for i in (0, 1)]
    out = sdedit(model, g, t0=0.5, steps=3, sampler="ddim", generator=two)
    assert out.shape == g.shape
    with pytest.raises(SDEditError, match="not text-conditional"):
        sdedit(model, g, t0=0.5, steps=3, prompts="a cat")


def _edit_json(root: Path, rel: str, **fields) -> None:
    data = json.loads((root / rel).read_text())
    data.update(fields)
    (root / rel).write_text(json.dumps(data))


BAD = [
    (lambda r: _edit_json(r, "model_index.json", text_encoder_2=["transformers", "CLIPTextModelWithProjection"]),
     "SDXL"),
    (lambda r: _edit_json(r, "model_index.json", vae=["diffusers", "VQModel"]), "only AutoencoderKL"),
    (lambda r: _edit_json(r, "unet/config.json", in_channels=9), "9-channel inpainting UNet"),
    (lambda r: _edit_json(r, "unet/config.json", addition_embed_type="text_time"), "another model family"),
    (lambda r: _edit_json(r, "unet/config.json", cross_attention_dim=64), "does not match the UNet's"),
    (lambda r: _edit_json(r, "vae/config.json", shift_factor=0.1159), "shift_factor"),
    (lambda r: _edit_json(r, "model_index.json", text_encoder=["transformers", "CLIPTextModelWithProjection"]),
     "only CLIPTextModel"),
    (lambda r: _edit_json(r, "scheduler/scheduler_config.json", _class_name="ScoreSdeVeScheduler"),
     "variance-preserving"),
    (lambda r: _edit_json(r, "scheduler/scheduler_config.json", beta_schedule="sigmoid"), "beta_schedule 'sigmoid'"),
    (lambda r: os.remove(r / "scheduler/scheduler_config.json"), "scheduler_config.json: missing"),
    (lambda r: [os.remove(r / "tokenizer" / n) for n in ("vocab.json", "merges.txt")], "needs tokenizer.json"),
    (lambda r: os.rename(r / "unet/diffusion_pytorch_model.safetensors",
                         r / "unet/diffusion_pytorch_model.safetensors.index.json"), "sharded weights"),
    (lambda r: _edit_json(r, "unet/config.json", block_out_channels=[16, 48]), "do not match the config"),
    (lambda r: _edit_json(r, "unet/config.json", _class_name="UNet2DModel"), "model_index.json says"),
]


@pytest.mark.parametrize("mutate,match", BAD, ids=[b[1] for b in BAD])
def test_unsupported_folders_are_refused_by_name(sd1, tmp_path, mutate, match):
    root = tmp_path / "bad"
    shutil.copytree(sd1, root)
    mutate(root)
    with pytest.raises(CheckpointError, match=match):
        load_score_model(root)
    if match != "do not match the config":  # a config-level refusal is the same without loading
        with pytest.raises(CheckpointError, match=match):
            read_model_config(root)
