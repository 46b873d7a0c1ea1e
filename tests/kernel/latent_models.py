"""Tiny Stable Diffusion pipeline folders built locally (no hub): UNet2DConditionModel, AutoencoderKL,
CLIPTextModel and a CLIPTokenizer whose vocab.json and merges.txt are written here.

The VAE has four levels (8 pixels per latent cell, as SD's); the UNet two (8 x 8 latents for 64 x 64
pixels); the text model two layers of width 32 with SD's 77-token limit. "sd1" is SD 1.x-shaped
(epsilon, PNDM config with steps_offset 1 and set_alpha_to_one false, quick_gelu, pad
<|endoftext|>); "sd2" SD 2.x-shaped (v_prediction, DDIM config, linear projections, per-level head
dims, gelu, pad "!").
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

PIXELS = 64  # guide side in pixels: 8 x 8 latents
MAX_TOKENS = 77
SCHEDULERS = {
    "sd1": {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "trained_betas": None, "clip_sample": False, "prediction_type": "epsilon"},
    "sd2": {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False,
            "prediction_type": "v_prediction"},
}
WORDS = ["a", "cat", "dog", "red", "blue", "house", "photo", "of", "the", "painting", "tree", "in"]


def bytes_to_unicode() -> list[str]:
    """CLIP's byte -> printable character table (the BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> int:
    """vocab.json (every byte, alone and word-final, a few whole words, the specials), merges.txt for
    those words, tokenizer_config.json and special_tokens_map.json as SD's repos have them; returns
    the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for word in WORDS:
        if len(word) < 2:
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": MAX_TOKENS, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True, **specials}))
    return len(vocab)


def tiny_components(kind: str = "sd1", seed: int = 0, tokenizer_dir: Path | None = None, *,
                    unet_channels: tuple[int, ...] = (16, 32), vae_channels: tuple[int, ...] = (8, 8, 16, 16),
                    text_width: int = 32, text_layers: int = 2) -> dict[str, Any]:
    """The pipeline's components with seeded random weights (the widths default to the tests' tiny ones;
    benchmarks/latent_vs_diffusers.py asks for larger ones)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sd2 = kind == "sd2"
    size = write_clip_tokenizer(tokenizer_dir, pad="!" if sd2 else "<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    torch.manual_seed(seed)
    levels = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=PIXELS // 8, in_channels=4, out_channels=4, block_out_channels=unet_channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1), cross_attention_dim=text_width,
        attention_head_dim=tuple(c // 8 for c in unet_channels) if sd2 else 4, use_linear_projection=sd2,
        norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=vae_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=PIXELS)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=size, hidden_size=text_width, intermediate_size=text_width + 5, num_hidden_layers=text_layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=size - 1))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text.eval(), "tokenizer": tokenizer}


def save_sd_folder(root: Path, kind: str = "sd1", seed: int = 0, *, safe: bool = True, **widths: Any) -> Path:
    """A diffusers StableDiffusionPipeline folder (model_index.json), no safety checker; the tokenizer
    folder keeps the hand-written vocab.json and merges.txt, as SD's own repos do. widths: see
    tiny_components."""
    from diffusers import StableDiffusionPipeline
    from diffusers.schedulers import DDIMScheduler, PNDMScheduler

    root = Path(root)
    parts = tiny_components(kind, seed, root.parent / f".{root.name}-tokenizer", **widths)
    sched_cfg = SCHEDULERS[kind]
    cls = PNDMScheduler if sched_cfg["_class_name"] == "PNDMScheduler" else DDIMScheduler
    scheduler = cls.from_config({k: v for k, v in sched_cfg.items() if k != "_class_name"})
    pipe = StableDiffusionPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root, safe_serialization=safe)
    tok = root / "tokenizer"
    for name in os.listdir(tok):
        os.remove(tok / name)
    write_clip_tokenizer(tok, pad="!" if kind == "sd2" else "<|endoftext|>")
    return root


def guides(batch: int, seed: int = 0) -> torch.Tensor:
    """Smooth random pixel guides [B, 3, 64, 64] in [0, 1] (low-frequency, like images)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(PIXELS, PIXELS), mode="bilinear", align_corners=False)


@contextlib.contextmanager
def private_cache(path: Path) -> Iterator[None]:
    """$SDEDIT_CACHE pointed at `path`: tests never write into the user's ~/.cache/sdedit."""
    old = os.environ.get("SDEDIT_CACHE")
    os.environ["SDEDIT_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SDEDIT_CACHE", None)
        else:
            os.environ["SDEDIT_CACHE"] = old
