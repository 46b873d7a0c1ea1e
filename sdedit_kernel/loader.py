"""Load a diffusers UNet2DModel checkpoint (flat or pipeline layout, local or any fsspec URI).

Weights are read with safetensors, or `torch.load(weights_only=True)` for `.bin`: a checkpoint never
runs code. The scheduler config decides the SDE: DDPM-style configs give a VPSDE, ScoreSdeVe
configs a VESDE with data in [0, 1]. A class-conditional UNet (`num_class_embeds`, or
`class_embed_type="timestep"`) may carry `labels.json` next to its config.json (or, in the pipeline
layout, at the root): `{"names": [...], "null_label": N}`, both optional (sdedit_kernel.labels).
Every error names the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CheckpointError, SDEditError
from .labels import ClassLabels, check_class_embedding, classes_from_config, parse_labels_file
from .model import ScoreModel
from .sde import VESDE, VPSDE
from .store import Store

VP_SCHEDULERS = {
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMParallelScheduler",
}
VE_SCHEDULERS = {"ScoreSdeVeScheduler", "KarrasVeScheduler"}


@dataclass(frozen=True)
class PixelLayout:
    """What a pixel-space UNet2DModel folder declares, read from its configs (no weights)."""

    unet_dir: str  # "" (flat layout) or "unet/" (pipeline layout)
    config: dict[str, Any]
    sde: VPSDE | VESDE
    prediction: str
    data_range: tuple[float, float]
    classes: ClassLabels | None
    weights_name: str


def load_score_model(
    uri: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    storage_options: dict[str, Any] | None = None,
    variant: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ScoreModel:
    """A ScoreModel from a diffusers folder, local or any fsspec URI.

    Pixel models: a UNet2DModel folder, flat (config.json, scheduler_config.json and weights at the
    root) or pipeline (model_index.json, unet/, scheduler/). Latent models (Stable Diffusion 1.x/2.x):
    a pipeline folder whose model_index.json names a vae; see sdedit_kernel.latent_loader, which also
    explains `cache_dir` (where a remote latent checkpoint is copied once per node). variant: the
    weights' file variant (e.g. "fp16" reads diffusion_pytorch_model.fp16.safetensors).
    """
    store = Store(os.fspath(uri), storage_options)
    index = store.json("model_index.json") if store.exists("model_index.json") else None
    if index is not None and is_latent_index(index):
        from .latent_loader import load_latent_model

        return load_latent_model(store, index, device=device, dtype=dtype, variant=variant, cache_dir=cache_dir)
    layout = pixel_layout(store, pipeline=index is not None, variant=variant)
    unet_dir, config, weights_name = layout.unet_dir, layout.config, layout.weights_name
    raw = store.read(unet_dir + weights_name)
    where = f"{store.uri}/{unet_dir}{weights_name}"
    state = _read_weights(raw, weights_name, where)

    from diffusers import UNet2DModel  # the only place that knows diffusers

    try:
        net = UNet2DModel.from_config(config)
    except Exception as e:  # diffusers raises many kinds for a bad config
        raise CheckpointError(f"{store.uri}/{unet_dir}config.json: cannot build UNet2DModel ({e})") from e
    missing, unexpected = _compare_keys(net.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match config.json; missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not match config.json ({str(e).splitlines()[-1]})") from e
    _quiet_to(net, device, dtype)
    if config.get("class_embed_type") == "timestep" and dtype != torch.float32:
        # diffusers feeds the float32 time projection of the labels to a half-precision Linear
        net.class_embedding.register_forward_pre_hook(lambda mod, args: (args[0].to(mod.linear_1.weight.dtype),))
    sde, prediction, data_range, classes = layout.sde, layout.prediction, layout.data_range, layout.classes
    sample = net.config.sample_size
    return ScoreModel(net, sde, prediction, data_range, channels=net.config.in_channels,
                      sample_size=tuple(sample) if isinstance(sample, list | tuple) else sample,
                      digest=hashlib.sha256(raw).hexdigest(), source=store.uri, classes=classes)


def pixel_layout(store: Store, *, pipeline: bool, variant: str | None = None) -> PixelLayout:
    """The configs of a pixel-space UNet2DModel folder, checked; only existence is asked of the weights."""
    if pipeline:
        unet_dir, sched_file = "unet/", "scheduler/scheduler_config.json"
    elif store.exists("config.json"):
        unet_dir, sched_file = "", "scheduler_config.json"
    else:
        raise CheckpointError(f"{store.uri}: neither config.json (flat layout) nor model_index.json "
                              "(pipeline layout) found")
    config = store.json(unet_dir + "config.json")
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CheckpointError(f"{store.uri}/{unet_dir}config.json: _class_name is {cls!r}; only UNet2DModel "
                              "(pixel-space score models) is supported here; latent models need a pipeline "
                              "folder whose model_index.json names a vae")
    if not store.exists(sched_file):
        raise CheckpointError(f"{store.uri}/{sched_file}: missing; SDEdit needs the noise schedule the model "
                              "was trained with")
    sde, prediction, data_range = sde_from_scheduler_config(store.json(sched_file), f"{store.uri}/{sched_file}")
    classes = _read_classes(store, unet_dir, config)
    names = weight_names("diffusers", variant)
    weights_name = next((n for n in names if store.exists(unet_dir + n)), None)
    if weights_name is None:
        raise CheckpointError(f"{store.uri}/{unet_dir}: no weights ({' or '.join(names)})")
    return PixelLayout(unet_dir, config, sde, prediction, data_range, classes, weights_name)


def weight_names(library: str, variant: str | None = None) -> tuple[str, str]:
    """The weight file names a diffusers or transformers component may have, safetensors first."""
    stem = {"diffusers": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
            "transformers": ("model", "pytorch_model")}[library]
    v = f".{variant}" if variant else ""
    return f"{stem[0]}{v}.safetensors", f"{stem[1]}{v}.bin"


def is_latent_index(index: dict[str, Any]) -> bool:
    """A pipeline folder is a latent model when its model_index.json names a VAE."""
    entry = index.get("vae")
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def _read_classes(store: Store, unet_dir: str, config: dict[str, Any]) -> ClassLabels | None:
    """The network's labels: config.json's class embedding, named by labels.json when there is one
    (the unet folder's first, then the root's)."""
    try:
        check_class_embedding(config)
        rel = next((r for r in dict.fromkeys((unet_dir + "labels.json", "labels.json")) if store.exists(r)), None)
        if rel is None:
            return classes_from_config(config)
    except SDEditError as e:
        raise CheckpointError(f"{store.uri}/{unet_dir}config.json: {e}") from e
    try:
        return classes_from_config(config, *parse_labels_file(store.json(rel)))
    except CheckpointError:
        raise
    except SDEditError as e:
        raise CheckpointError(f"{store.uri}/{rel}: {e}") from e


def sde_from_scheduler_config(cfg: dict[str, Any], where: str) -> tuple[VPSDE | VESDE, str, tuple[float, float]]:
    """(sde, prediction, data_range) from a diffusers scheduler config."""
    cls = cfg.get("_class_name")
    try:
        if cls in VE_SCHEDULERS:
            n = _num(cfg, "num_train_timesteps", where, 2000, int)
            sde = VESDE(_num(cfg, "sigma_min", where, 0.01), _num(cfg, "sigma_max", where, 1348.0), n)
            return sde, "score", (0.0, 1.0)
        if cls not in VP_SCHEDULERS:
            raise CheckpointError(f"{where}: _class_name {cls!r} is not a known scheduler (VP: "
                                  f"{', '.join(sorted(VP_SCHEDULERS))}; VE: {', '.join(sorted(VE_SCHEDULERS))})")
        n = _num(cfg, "num_train_timesteps", where, 1000, int)
        prediction = cfg.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "sample", "v_prediction"):
            raise CheckpointError(f"{where}: prediction_type {prediction!r} is not epsilon, sample or v_prediction")
        if cfg.get("trained_betas") is not None:
            sde = VPSDE(cfg["trained_betas"])
            if sde.num_train_timesteps != n:
                raise CheckpointError(f"{where}: trained_betas has {sde.num_train_timesteps} entries, "
                                      f"num_train_timesteps says {n}")
        else:
            kind = cfg.get("beta_schedule", "linear")
            b0 = _num(cfg, "beta_start", where, 1e-4)
            b1 = _num(cfg, "beta_end", where, 0.02)
            if kind == "linear":
                sde = VPSDE.linear(b0, b1, n)
            elif kind == "scaled_linear":
                sde = VPSDE.scaled_linear(b0, b1, n)
            elif kind == "squaredcos_cap_v2":
                sde = VPSDE.cosine(n)
            else:
                raise CheckpointError(f"{where}: beta_schedule {kind!r} is not linear, scaled_linear "
                                      "or squaredcos_cap_v2")
        return sde, prediction, (-1.0, 1.0)
    except CheckpointError:
        raise
    except SDEditError as e:
        raise CheckpointError(f"{where}: {e}") from e


def _num(cfg: dict[str, Any], key: str, where: str, default: float, kind: type = float):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and int(v) != v):
        raise CheckpointError(f"{where}: field {key} must be {'an integer' if kind is int else 'a number'}, "
                              f"got {v!r}")
    return kind(v)


def _read_weights(raw: bytes, name: str, where: str) -> dict[str, torch.Tensor]:
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(raw)
        except Exception as e:
            raise CheckpointError(f"{where}: not a readable safetensors file ({e})") from e
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything that would run code
        raise CheckpointError(f"{where}: refused: not a plain tensor checkpoint; loading it would need to run "
                              f"code from the file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: expected a dict of tensors")
    return state


def _compare_keys(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[list, list]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def _quiet_to(net: Any, device: str | torch.device, dtype: torch.dtype) -> None:
    """Move the network; diffusers' advice about fp32 modules is not for inference-only use."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    finally:
        dlogging.set_verbosity(level)
