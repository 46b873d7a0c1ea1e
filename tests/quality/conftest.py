"""Fixtures for the quality tests: a tiny random diffusers UNet2DModel folder, as users bring."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-unet")
    UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    ).save_pretrained(out, safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  prediction_type="epsilon", variance_type="fixed_small", clip_sample=False).save_config(out)
    return out
