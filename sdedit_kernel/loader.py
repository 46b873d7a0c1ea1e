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
import json
import os
from typing import Any

import torch

from .errors import CheckpointError, SDEditError
from .labels import ClassLabels, check_class_embedding, classes_from_config, parse_labels_file
from .model import ScoreModel
from .sde import VESDE, VPSDE

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
VP_SCHEDULERS = {
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMParallelScheduler",
}
VE_SCHEDULERS = {"ScoreSdeVeScheduler", "KarrasVeScheduler"}


class _Store:
    """Read-only file access under a checkpoint root: the local disk, or fsspec for a URI."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.uri = uri.rstrip("/")
        if "://" in uri and not uri.startswith("file://"):
            import fsspec  # lazily: only remote checkpoints need it

            self.fs, self.root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = None, os.path.abspath(uri.removeprefix("file://"))
            if not os.path.isdir(self.root):
                raise CheckpointError(f"{uri}: no such checkpoint folder")

    def exists(self, rel: str) -> bool:
        path = f"{self.root}/{rel}"
        return self.fs.isfile(path) if self.fs else os.path.isfile(path)

    def read(self, rel: str) -> bytes:
        path = f"{self.root}/{rel}"
        try:
            if self.fs:
                with self.fs.open(path, "rb") as f:
                    return f.read()
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, OSError) as e:
            raise CheckpointError(f"{self.uri}/{rel}: cannot read ({e})") from e

    def json(self, rel: str) -> dict[str, Any]:
        try:
            data = json.loads(self.read(rel))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.uri}/{rel}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{self.uri}/{rel}: expected a JSON object")
        return data


def load_score_model(
    uri: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    storage_options: dict[str, Any] | None = None,
) -> ScoreModel:
    """A ScoreModel from a diffusers UNet2DModel folder: flat (config.json, scheduler_config.json and
    weights at the root) or pipeline (model_index.json, unet/, scheduler/)."""
    store = _Store(os.fspath(uri), storage_options)
    if store.exists("model_index.json"):
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
                              "(pixel-space score models) is supported")
    if not store.exists(sched_file):
        raise CheckpointError(f"{store.uri}/{sched_file}: missing; SDEdit needs the noise schedule the model "
                              "was trained with")
    sched = store.json(sched_file)
    sde, prediction, data_range = sde_from_scheduler_config(sched, f"{store.uri}/{sched_file}")
    classes = _read_classes(store, unet_dir, config)

    weights_name = next((n for n in WEIGHT_NAMES if store.exists(unet_dir + n)), None)
    if weights_name is None:
        raise CheckpointError(f"{store.uri}/{unet_dir}: no weights ({' or '.join(WEIGHT_NAMES)})")
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
    sample = net.config.sample_size
    return ScoreModel(net, sde, prediction, data_range, channels=net.config.in_channels,
                      sample_size=tuple(sample) if isinstance(sample, list | tuple) else sample,
                      digest=hashlib.sha256(raw).hexdigest(), source=store.uri, classes=classes)


def _read_classes(store: _Store, unet_dir: str, config: dict[str, Any]) -> ClassLabels | None:
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
