"""`sdedit`: perturb the guide to t0, solve the reverse SDE to 0, keep the unedited region, repeat."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import SDEditError
from .labels import Label
from .mask import composite, keep_region
from .model import ScoreModel
from .noise import Noise
from .samplers import get_sampler
from .text import Prompts


def resolve_steps(model: ScoreModel, t0: float, steps: int | None = None, sampler: str = "ancestral") -> int:
    """The number of reverse steps actually taken from t0 to 0; never zero, never silently cut.

    A t0 below one training step of the model (round(t0 * N) = 0) is refused whatever the sampler:
    the perturbation would be smaller than any noise level the network was trained at.
    """
    t0 = check_t0(t0)
    spec = get_sampler(sampler)
    if model.sde.default_steps(t0) < 1:
        raise SDEditError(
            f"t0={t0} is below one training step of this model (1/{model.sde.num_train_timesteps}): the "
            "perturbation would be smaller than any noise level it was trained at; raise t0")
    if steps is None:
        return spec.default_steps if spec.default_steps is not None else model.sde.default_steps(t0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SDEditError(f"steps must be an integer >= 1 (the reverse steps taken), got {steps!r}")
    return steps


def model_calls(sampler: str, steps: int, passes: int = 1, **options: Any) -> int:
    """Network evaluations per output."""
    spec = get_sampler(sampler)
    return spec.calls_per_step(spec.resolve_options(options)) * steps * passes


def check_t0(t0: float) -> float:
    if isinstance(t0, bool) or not isinstance(t0, int | float) or not math.isfinite(t0) or not 0 < t0 <= 1:
        raise SDEditError(f"t0 must be a number in (0, 1], got {t0!r}")
    return float(t0)


def sdedit(
    model: ScoreModel,
    guide: torch.Tensor,
    *,
    t0: float,
    steps: int | None = None,
    sampler: str = "ancestral",
    edit_mask: torch.Tensor | None = None,
    passes: int = 1,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    labels: torch.Tensor | Sequence[Label] | None = None,
    guidance_scale: float | torch.Tensor | Sequence[float] = 1.0,
    prompts: Prompts = None,
    negative_prompts: Prompts = None,
    **sampler_options: Any,
) -> torch.Tensor:
    """SDEdit (Meng et al., ICLR 2022) on a batch of guides.

    guide: `[B, C, H, W]` pixels in [0, 1]. edit_mask: `[B, 1 or C, H, W]` in [0, 1], 1 = regenerate,
    0 = keep (the result equals the guide exactly there). passes: the official repeat count, each pass
    restarting from the previous output. generator: one for the batch, or a list with one per item
    (then an output does not depend on its batch mates). steps: reverse steps actually taken from
    t0 to 0 (None: the sampler's default; for "ancestral", round(t0 * num_train_timesteps)).
    callback(pass_index, x) sees the model-space state after each pass. Returns pixels in [0, 1],
    clamped once, at the very end.

    labels (class-conditional models): one per item, an index, a class name or None (unlabelled: the
    null label, i.e. the unconditional model); labels=None leaves every item unlabelled. A LongTensor
    [B] works too. guidance_scale: classifier-free guidance weight w, one for the batch or a tensor
    [B]: 1 = the conditional model, 0 = the unconditional one, > 1 guided (sdedit_kernel.guidance).

    prompts (text-conditional models): one string for every item or one per item; None, and None
    entries, are the empty prompt "". negative_prompts: the unconditional half of guidance, per item
    as prompts; None (or a None entry) is the empty prompt, as in diffusers. Prompts over the text
    encoder's limit are truncated (sdedit_kernel.text.prompt_notes says which).

    A latent model (sdedit_kernel.latent) takes the same pixel guide and mask and returns pixels: the
    guide is encoded, the mask mapped to the latent grid, and kept pixels are the guide's own again
    after decoding.
    """
    spec = get_sampler(sampler)
    options = spec.resolve_options(sampler_options)
    n = resolve_steps(model, t0, steps, sampler)
    t0 = float(t0)
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise SDEditError(f"passes must be an integer >= 1, got {passes!r}")
    guide = _check_guide(model, guide)
    mask = _check_mask(edit_mask, guide) if edit_mask is not None else None
    denoiser = model.bind(guide.shape[0], labels=labels, guidance_scale=guidance_scale, prompts=prompts,
                          negative_prompts=negative_prompts)

    noise = Noise(generator, guide.shape[0])
    grid = model.sde.time_grid(t0, n)
    y = model.to_model_space(guide)
    m = model.mask_to_model_space(mask).expand_as(y) if mask is not None else None
    a0, s0 = model.sde.marginal(t0)
    start = y
    for p in range(passes):
        z = noise.like(y)
        x = a0 * start + s0 * z
        if m is None:
            def after_step(v, t):
                return v
        else:
            after_step = keep_region(model.sde, m, y, z)
            x = after_step(x, t0)
        x = spec.fn(denoiser, x, grid, noise, after_step, **options)
        start = x if m is None else torch.lerp(y, x, m)
        if callback is not None:
            callback(p, start)
    out = composite(guide, model.to_pixels(start).to(guide.device), mask)
    return out.clamp_(0.0, 1.0)


def _check_guide(model: ScoreModel, guide: torch.Tensor) -> torch.Tensor:
    if not isinstance(guide, torch.Tensor) or guide.dim() != 4:
        raise SDEditError("guide must be a tensor [B, C, H, W] of pixels in [0, 1]")
    if not guide.is_floating_point():
        raise SDEditError(f"guide must be floating point pixels in [0, 1], got {guide.dtype}")
    if model.channels is not None and guide.shape[1] != model.channels:
        raise SDEditError(f"guide has {guide.shape[1]} channels, the model takes {model.channels}")
    if guide.numel() and not (torch.isfinite(guide).all() and guide.min() >= 0 and guide.max() <= 1):
        raise SDEditError("guide pixels must be finite and in [0, 1]")
    model.check_pixel_size(guide.shape[2], guide.shape[3])
    return guide.float()


def _check_mask(mask: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    b, c, h, w = guide.shape
    if (not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[0] != b
            or mask.shape[1] not in (1, c) or tuple(mask.shape[2:]) != (h, w)):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SDEditError(f"edit_mask must be [B, 1 or C, H, W] = [{b}, 1|{c}, {h}, {w}], got {shape}")
    mask = mask.to(device=guide.device, dtype=torch.float32)
    if not (torch.isfinite(mask).all() and mask.min() >= 0 and mask.max() <= 1):
        raise SDEditError("edit_mask values must be in [0, 1] (1 = regenerate, 0 = keep)")
    return mask.expand(b, c, h, w)
