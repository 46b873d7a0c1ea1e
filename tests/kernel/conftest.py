from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from sdedit_testing import tiny_unet  # the shared recipe; kernel tests import it from here

sys.path.insert(0, os.path.dirname(__file__))
# Tiny tensors: one thread is as fast, and immune to OpenMP barrier stalls on a busy 2-core machine.
torch.set_num_threads(1)


def save_checkpoint(root, net, scheduler: dict, *, layout: str = "flat", weights: str = "safetensors"):
    """Write a diffusers checkpoint folder in either layout and weight format."""
    root = str(root)
    unet_dir = root if layout == "flat" else os.path.join(root, "unet")
    net.save_pretrained(unet_dir, safe_serialization=(weights == "safetensors"))
    sched_dir = root if layout == "flat" else os.path.join(root, "scheduler")
    os.makedirs(sched_dir, exist_ok=True)
    with open(os.path.join(sched_dir, "scheduler_config.json"), "w") as f:
        json.dump(scheduler, f)
    if layout == "pipeline":
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                       "scheduler": ["diffusers", scheduler["_class_name"]]}, f)
    return root


DDPM_CONFIG = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
               "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
               "variance_type": "fixed_small", "clip_sample": True}


@pytest.fixture(scope="session")
def tiny_model():
    from sdedit_kernel import VPSDE, ScoreModel

    return ScoreModel(tiny_unet(channels=3), VPSDE.linear())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt") / "flat"
    return save_checkpoint(root, tiny_unet(channels=1), DDPM_CONFIG)


@pytest.fixture(scope="module")
def private_sdedit_cache(tmp_path_factory):
    """$SDEDIT_CACHE in a temporary folder for one module: the latent tests never write into the user's
    ~/.cache/sdedit (the latent test modules use it autouse)."""
    from latent_models import private_cache

    with private_cache(tmp_path_factory.mktemp("sdedit-cache")):
        yield


@pytest.fixture(scope="module")
def sd1(tmp_path_factory, private_sdedit_cache):
    """A tiny SD 1.x-shaped pipeline folder (seed 1)."""
    from latent_models import save_sd_folder

    return save_sd_folder(tmp_path_factory.mktemp("sd1") / "m", "sd1", seed=1)
