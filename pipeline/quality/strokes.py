"""Simulated stroke paintings: real images blurred, then quantised to a few flat grey levels.

This follows the SDEdit paper's recipe for its simulated-stroke benchmark (Meng et al. 2022, the
LSUN tables): blur away texture and fine detail, then reduce the palette so that what is left looks
like a few flat strokes of paint. The paper works at 256 px; the defaults here are scaled to 28 px
Fashion-MNIST and are documented in docs/quality.md:

- blur: a separable Gaussian of `blur_size` taps, sigma = blur_size / 4 (default 5 taps, sigma
  1.25 px, edge pixels replicated), which removes stripes, prints and seams but keeps thin garments
  (sandal straps) alive; or a `blur_size` x `blur_size` median filter (`blur="median"`), which
  keeps edges harder but erases anything thinner than half its window;
- quantise: every pixel snapped to the nearest of `levels` evenly spaced grey levels in [0, 1]
  (default 4: 0, 1/3, 2/3, 1), so a guide holds at most `levels` distinct values.

The transform itself is deterministic; the randomness is in which test images become guides
(`pick_indices`, seeded), so a seed names the whole evaluation set.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_BLUR = "gaussian"
DEFAULT_BLUR_SIZE = 5
DEFAULT_LEVELS = 4


def stroke_levels(levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """The grey levels a stroke guide may take: `levels` values evenly spaced over [0, 1]."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return torch.linspace(0.0, 1.0, levels)


def _median_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    pad = size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    b, c, h, w = x.shape
    windows = F.unfold(padded, size).view(b, c, size * size, h, w)
    return windows.median(dim=2).values


def _gaussian_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    sigma = size / 4.0
    radius = size // 2
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def quantise(x: torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """Snap every pixel (in [0, 1]) to the nearest of `levels` evenly spaced grey levels."""
    grey = stroke_levels(levels).to(x.device)
    return grey[torch.round(x.clamp(0.0, 1.0) * (levels - 1)).long()]


def make_stroke_guides(images: torch.Tensor, *, blur: str = DEFAULT_BLUR, blur_size: int = DEFAULT_BLUR_SIZE,
                       levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """Stroke guides `[B, C, H, W]` in [0, 1] from images `[B, C, H, W]` in [0, 1]: blur, then quantise."""
    if images.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    if blur_size < 1 or blur_size % 2 == 0:
        raise ValueError(f"blur_size must be a positive odd number, got {blur_size}")
    x = images.float()
    if blur == "median":
        x = _median_blur(x, blur_size)
    elif blur == "gaussian":
        x = _gaussian_blur(x, blur_size)
    else:
        raise ValueError(f"unknown blur {blur!r}: use 'gaussian' or 'median'")
    return quantise(x, levels)


def pick_indices(total: int, sizes: list[int] | tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes out of `range(total)`, fixed by `seed`."""
    if sum(sizes) > total:
        raise ValueError(f"asked for {sum(sizes)} distinct indices out of {total}")
    perm = np.random.default_rng(seed).permutation(total)
    bounds = np.cumsum([0, *sizes])
    return [np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
