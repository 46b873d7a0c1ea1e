"""Load a latent diffusers pipeline folder (Stable Diffusion 1.x/2.x) as a LatentScoreModel.

Called by `load_score_model` when model_index.json names a vae. The configs are checked first
(sdedit_kernel.components: unsupported families are refused before any weight is read). A remote
folder is copied once per node into the local cache (sdedit_kernel.cache); then every network is
built empty on the meta device and given the file's tensors (sdedit_kernel.weights), so weights are
never held twice. UNet, VAE and text encoder all take `dtype` (as diffusers' torch_dtype does).
diffusers and transformers are imported here, lazily: the kernel's import stays light.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .cache import local_copy
from .components import LatentLayout, read_latent_layout
from .errors import CheckpointError
from .latent import LatentScoreModel
from .store import Store
from .text import TextEncoder
from .weights import assign_weights, build_empty, read_state


def load_latent_model(store: Store, index: dict[str, Any], *, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, variant: str | None = None,
                      cache_dir: str | os.PathLike | None = None) -> LatentScoreModel:
    """The folder's UNet, VAE and (for text-conditional UNets) CLIP text encoder and tokenizer."""
    layout = read_latent_layout(store, index, variant)
    root, digest = local_copy(store, layout.files(), cache_dir)
    device = torch.device(device)
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # from_config's notes about unused fields are not for inference
    try:
        unet_cls = UNet2DConditionModel if layout.unet_class == "UNet2DConditionModel" else UNet2DModel
        unet = _network(store, root, "unet", lambda: unet_cls.from_config(layout.unet), layout, device, dtype)
        vae = _network(store, root, "vae", lambda: AutoencoderKL.from_config(layout.vae), layout, device, dtype)
    finally:
        dlogging.set_verbosity(level)
    text = _text_encoder(store, root, layout, device, dtype) if layout.text_encoder is not None else None
    return LatentScoreModel(unet, layout.sde, layout.prediction, vae=vae, text=text, digest=digest,
                            source=store.uri)


def _network(store: Store, root: str, component: str, factory: Any, layout: LatentLayout,
             device: torch.device, dtype: torch.dtype) -> Any:
    rel = layout.weights[component]
    where = f"{store.uri}/{rel}"
    net = build_empty(factory, f"{store.uri}/{component}/config.json")
    return assign_weights(net, read_state(os.path.join(root, rel), where, device, dtype), where)


def _text_encoder(store: Store, root: str, layout: LatentLayout, device: torch.device,
                  dtype: torch.dtype) -> TextEncoder:
    import transformers
    from transformers import CLIPTextConfig, CLIPTextModel

    where = f"{store.uri}/text_encoder/config.json"
    try:
        config = CLIPTextConfig.from_dict(layout.text_encoder)
    except Exception as e:
        raise CheckpointError(f"{where}: not a CLIP text config ({e})") from e
    model = _network(store, root, "text_encoder", lambda: CLIPTextModel(config), layout, device, dtype)
    # the class model_index.json names (CLIPTokenizerFast where a library still has both kinds)
    tokenizer_cls = getattr(transformers, layout.tokenizer_class, None) or transformers.CLIPTokenizer
    try:
        tokenizer = tokenizer_cls.from_pretrained(os.path.join(root, "tokenizer"), local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{store.uri}/tokenizer/: cannot load the CLIP tokenizer ({e})") from e
    return TextEncoder(tokenizer, model, layout.max_prompt_tokens)
