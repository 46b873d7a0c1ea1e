"""The components of a latent diffusers pipeline folder (Stable Diffusion 1.x/2.x), read from configs alone.

`model_index.json` names each component's library and class; each lives in its own sub-folder with
a config and weights. This module checks the configs against what the kernel can run, so that a
job is refused (with the file and field named) before any weight is read, and lists exactly the
files the loader needs: the remote cache copies those and nothing else (no safety checker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError
from .loader import sde_from_scheduler_config, weight_names
from .sde import VESDE, VPSDE
from .store import Store

UNETS = ("UNet2DConditionModel", "UNet2DModel")
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
# UNet2DConditionModel fields of other model families (SDXL, upscalers, IF, Kandinsky, LCM, ...)
UNSUPPORTED_UNET_FIELDS = ("addition_embed_type", "class_embed_type", "num_class_embeds", "encoder_hid_dim",
                           "time_cond_proj_dim", "projection_class_embeddings_input_dim")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


@dataclass(frozen=True)
class LatentLayout:
    """A latent pipeline folder's configs, checked, and the relative paths of the files it loads from."""

    unet_class: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    sde: VPSDE | VESDE
    prediction: str
    text_encoder: dict[str, Any] | None  # None: an unconditional (or class-conditional) latent UNet2DModel
    tokenizer: dict[str, Any] | None  # tokenizer_config.json ({} when the folder has none)
    weights: dict[str, str]  # component -> weight file
    tokenizer_files: tuple[str, ...]
    tokenizer_class: str | None = None

    @property
    def latent_channels(self) -> int:
        return int(self.vae.get("latent_channels", 4))

    @property
    def pixel_channels(self) -> int:
        return int(self.vae.get("in_channels", 3))

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side: 2 ** (VAE levels - 1), as diffusers computes it."""
        return 2 ** (len(self.vae.get("block_out_channels", [64])) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.get("scaling_factor", 0.18215))

    @property
    def pixel_sample_size(self) -> int | tuple[int, int] | None:
        size = self.unet.get("sample_size")
        f = self.vae_scale_factor
        if isinstance(size, list | tuple):
            return tuple(int(v) * f for v in size)
        return None if size is None else int(size) * f

    @property
    def max_prompt_tokens(self) -> int | None:
        """The tokenizer's limit (tokenizer_config.json model_max_length), capped by the text encoder's
        position table; prompts longer than this are truncated."""
        if self.text_encoder is None:
            return None
        limits = [int(self.text_encoder.get("max_position_embeddings", 77))]
        given = (self.tokenizer or {}).get("model_max_length")
        if isinstance(given, int) and 0 < given < 10**6:  # tokenizers without a limit say 1e30
            limits.append(given)
        return min(limits)

    def files(self) -> list[str]:
        """Every file the loader reads, model_index.json included."""
        configs = ["model_index.json", "unet/config.json", "vae/config.json", SCHEDULER_CONFIG]
        if self.text_encoder is not None:
            configs.append("text_encoder/config.json")
        return sorted(set(configs) | set(self.weights.values()) | set(self.tokenizer_files))


def read_latent_layout(store: Store, index: dict[str, Any], variant: str | None = None) -> LatentLayout:
    """The folder's configs, checked against what the kernel runs; no weights are read."""
    where = f"{store.uri}/model_index.json"
    if index.get("text_encoder_2") is not None or "XL" in str(index.get("_class_name", "")):
        raise CheckpointError(f"{where}: SDXL pipelines (text_encoder_2, pooled embeddings, add_time_ids) are not "
                              "supported yet; Stable Diffusion 1.x and 2.x are")
    _, vae_cls = _entry(index, "vae", where)
    if vae_cls != "AutoencoderKL":
        raise CheckpointError(f"{where}: vae is {vae_cls!r}; only AutoencoderKL latents are supported "
                              "(not VQModel or AutoencoderTiny)")
    _, unet_cls = _entry(index, "unet", where)
    if unet_cls not in UNETS:
        raise CheckpointError(f"{where}: unet is {unet_cls!r}; supported: {', '.join(UNETS)}")
    unet = _config(store, "unet/config.json", unet_cls)
    vae = _config(store, "vae/config.json", "AutoencoderKL")
    if not store.exists(SCHEDULER_CONFIG):
        raise CheckpointError(f"{store.uri}/{SCHEDULER_CONFIG}: missing; SDEdit needs the noise schedule the model "
                              "was trained with")
    sde, prediction, _ = sde_from_scheduler_config(store.json(SCHEDULER_CONFIG), f"{store.uri}/{SCHEDULER_CONFIG}")
    if not isinstance(sde, VPSDE):
        raise CheckpointError(f"{store.uri}/{SCHEDULER_CONFIG}: latent models need a variance-preserving schedule")
    _check_unet(store, unet, unet_cls, vae)
    weights = {name: _weights(store, name, "diffusers", variant) for name in ("unet", "vae")}
    text = tokenizer = tok_cls = None
    tokenizer_files: tuple[str, ...] = ()
    if unet_cls == "UNet2DConditionModel":
        _, text_cls = _entry(index, "text_encoder", where)
        _, tok_cls = _entry(index, "tokenizer", where)
        if text_cls != "CLIPTextModel" or tok_cls not in TOKENIZERS:
            raise CheckpointError(f"{where}: text_encoder {text_cls!r} / tokenizer {tok_cls!r}: only CLIPTextModel "
                                  f"with {' or '.join(TOKENIZERS)} is supported (Stable Diffusion 1.x/2.x)")
        text = _config(store, "text_encoder/config.json", None)
        _check_text(store, text, unet)
        weights["text_encoder"] = _weights(store, "text_encoder", "transformers", variant)
        tokenizer_files = tuple(store.files("tokenizer"))
        vocab = {"tokenizer/tokenizer.json"} <= set(tokenizer_files) or {
            "tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(tokenizer_files)
        if not vocab:
            raise CheckpointError(f"{store.uri}/tokenizer/: needs tokenizer.json, or vocab.json and merges.txt")
        tokenizer = store.json("tokenizer/tokenizer_config.json") if store.exists(
            "tokenizer/tokenizer_config.json") else {}
    return LatentLayout(unet_cls, unet, vae, sde, prediction, text, tokenizer, weights, tokenizer_files, tok_cls)


def _entry(index: dict[str, Any], name: str, where: str) -> tuple[str, str]:
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
        raise CheckpointError(f"{where}: field {name} must be [library, class], got {entry!r}")
    return entry[0], entry[1]


def _config(store: Store, rel: str, cls: str | None) -> dict[str, Any]:
    if not store.exists(rel):
        raise CheckpointError(f"{store.uri}/{rel}: missing")
    cfg = store.json(rel)
    if cls is not None and cfg.get("_class_name", cls) != cls:
        raise CheckpointError(f"{store.uri}/{rel}: _class_name is {cfg.get('_class_name')!r}, model_index.json "
                              f"says {cls!r}")
    return cfg


def _check_unet(store: Store, unet: dict[str, Any], cls: str, vae: dict[str, Any]) -> None:
    rel = f"{store.uri}/unet/config.json"
    latent = int(vae.get("latent_channels", 4))
    if unet.get("in_channels") != latent:
        hint = " (a 9-channel inpainting UNet sees the mask: another model family)" if unet.get(
            "in_channels") == 9 else ""
        raise CheckpointError(f"{rel}: in_channels is {unet.get('in_channels')}, the VAE's latent_channels is "
                              f"{latent}{hint}")
    if unet.get("out_channels", latent) != latent:
        raise CheckpointError(f"{rel}: out_channels is {unet.get('out_channels')}, expected {latent} (the "
                              "latent channels; learned-variance outputs are not supported)")
    bad = [k for k in UNSUPPORTED_UNET_FIELDS if unet.get(k) is not None]
    if bad and cls == "UNet2DConditionModel":
        raise CheckpointError(f"{rel}: field(s) {bad} belong to another model family (SDXL, upscalers, LCM, ...); "
                              "only Stable Diffusion 1.x/2.x UNets are supported")
    if bad:
        raise CheckpointError(f"{rel}: field(s) {bad}: class-conditional latent models are not supported yet")
    shift = vae.get("shift_factor")
    if shift not in (None, 0, 0.0):
        raise CheckpointError(f"{store.uri}/vae/config.json: field shift_factor {shift!r} is not supported "
                              "(SD3/Flux VAEs)")


def _check_text(store: Store, text: dict[str, Any], unet: dict[str, Any]) -> None:
    width, cross = text.get("hidden_size"), unet.get("cross_attention_dim")
    if isinstance(cross, list | tuple):
        cross = cross[0] if len(set(cross)) == 1 else cross
    if width != cross:
        raise CheckpointError(f"{store.uri}/text_encoder/config.json: hidden_size {width} does not match the UNet's "
                              f"cross_attention_dim {cross}")


def _weights(store: Store, folder: str, library: str, variant: str | None) -> str:
    names = weight_names(library, variant)
    for name in names:
        if store.exists(f"{folder}/{name}"):
            return f"{folder}/{name}"
    if store.exists(f"{folder}/{names[0]}.index.json") or store.exists(f"{folder}/{names[1]}.index.json"):
        raise CheckpointError(f"{store.uri}/{folder}/: sharded weights (*.index.json) are not supported yet")
    raise CheckpointError(f"{store.uri}/{folder}/: no weights ({' or '.join(names)})")
