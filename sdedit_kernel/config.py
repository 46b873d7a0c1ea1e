"""What a checkpoint is, from its configs alone: so a driver can validate a job before any weight moves.

`read_model_config(uri)` reads model_index.json, the UNet/VAE/scheduler/text-encoder configs, the
tokenizer's limit and labels.json, and checks that the weight files exist, without reading them (one
`info` per file on a remote store). Everything `load_score_model` would refuse for a config reason
is refused here with the same message; a load can still fail on the weights themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .components import read_latent_layout
from .labels import ClassLabels
from .loader import is_latent_index, pixel_layout
from .store import Store


@dataclass(frozen=True)
class ModelConfig:
    """A checkpoint's kind and shapes.

    kind: "latent" or "pixel". channels and sample_size: the guides' pixels (for a latent model,
    the VAE's input channels and the UNet's sample_size x vae_scale_factor). conditioning: "text",
    "class" or None. prediction: epsilon, sample, v_prediction or score. weights: the weight files a
    load reads (relative paths). The latent_* fields and max_prompt_tokens are None for pixel models.
    """

    uri: str
    kind: str
    channels: int
    sample_size: int | tuple[int, int] | None
    conditioning: str | None
    prediction: str
    sde: str
    num_train_timesteps: int
    classes: ClassLabels | None
    weights: tuple[str, ...]
    latent_channels: int | None = None
    vae_scale_factor: int | None = None
    scaling_factor: float | None = None
    max_prompt_tokens: int | None = None

    @property
    def latent(self) -> bool:
        return self.kind == "latent"


def read_model_config(uri: str | os.PathLike, storage_options: dict[str, Any] | None = None, *,
                      variant: str | None = None) -> ModelConfig:
    """The checkpoint's ModelConfig, read from its configs (CheckpointError names the file and field)."""
    store = Store(os.fspath(uri), storage_options)
    index = store.json("model_index.json") if store.exists("model_index.json") else None
    if index is not None and is_latent_index(index):
        lay = read_latent_layout(store, index, variant)
        return ModelConfig(
            uri=store.uri, kind="latent", channels=lay.pixel_channels, sample_size=lay.pixel_sample_size,
            conditioning="text" if lay.text_encoder is not None else None,
            prediction=lay.prediction, sde=type(lay.sde).__name__, num_train_timesteps=lay.sde.num_train_timesteps,
            classes=None, weights=tuple(sorted(lay.weights.values())), latent_channels=lay.latent_channels,
            vae_scale_factor=lay.vae_scale_factor, scaling_factor=lay.scaling_factor,
            max_prompt_tokens=lay.max_prompt_tokens)
    pix = pixel_layout(store, pipeline=index is not None, variant=variant)
    size = pix.config.get("sample_size")
    return ModelConfig(
        uri=store.uri, kind="pixel", channels=int(pix.config.get("in_channels", 3)),
        sample_size=tuple(size) if isinstance(size, list | tuple) else size,
        conditioning="class" if pix.classes is not None else None, prediction=pix.prediction,
        sde=type(pix.sde).__name__, num_train_timesteps=pix.sde.num_train_timesteps, classes=pix.classes,
        weights=(pix.unet_dir + pix.weights_name,))

