"""Fixtures for the quality tests: a tiny random diffusers UNet2DModel folder, as users bring."""

from __future__ import annotations

import pytest
from sdedit_testing import save_tiny_model


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    """The shared tiny model at Fashion-MNIST's 28x28, one channel, with the official DDPM schedule."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-unet"), channels=1, size=28,
                           num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                           prediction_type="epsilon", variance_type="fixed_small", clip_sample=False)
