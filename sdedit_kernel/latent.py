"""A score model that runs in a VAE's latent space (Stable Diffusion 1.x/2.x): pixels in, pixels out.

SDEdit needs no change of algorithm for latents: the guide is encoded, perturbed to t0 and solved
back exactly as a pixel guide is (same SDE, samplers, kept-region rule), then decoded. What this
class adds is the map between pixels and latents, owned by the model so that `sdedit` stays one code
path:

- encode: the VAE posterior's MEAN times `scaling_factor`, deterministic. (diffusers' img2img
  *samples* the posterior with the generator; the posterior's std is small, but the mean makes the
  start depend on the noise draw z alone, as for a pixel model.)
- decode: `vae.decode(x / scaling_factor)`, mapped from [-1, 1] to pixels in [0, 1].
- masks: a latent cell is regenerated when ANY pixel over it is (the mask's max over the cell's
  vae_scale_factor x vae_scale_factor pixels and its channels): conservative, so no pixel marked for
  editing is kept by the latent blend. After decoding, `sdedit` composites with the guide in pixel
  space, so kept pixels are the guide's own bits (the VAE round trip changes them otherwise).
- slices: the VAE runs on at most `vae_batch` items at a time (None: the whole batch). Out of device
  memory (torch.cuda.OutOfMemoryError), the slice is halved and the call retried, and the smaller size is
  kept for the next calls. Slicing changes memory, not results: each item is encoded and decoded
  on its own (up to the float rounding of batched kernels).

The VAE runs under the same autocast and channels-last settings as the UNet (execution.accelerate);
torch.compile applies to the UNet only (the VAE runs once per batch, the UNet once per step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import SDEditError
from .labels import ClassLabels
from .model import ScoreModel
from .sde import VPSDE
from .text import TextEncoder


class LatentScoreModel(ScoreModel):
    """A latent UNet plus its AutoencoderKL (and, for Stable Diffusion, its text encoder).

    `channels` and `sample_size` describe the PIXELS a guide has (3, unet sample_size x
    vae_scale_factor), as for a pixel model; `latent_channels` and `vae_scale_factor` the state.
    """

    def __init__(self, net: Any, sde: VPSDE, prediction: str = "epsilon", *, vae: Any,
                 text: TextEncoder | None = None, classes: ClassLabels | None = None, digest: str | None = None,
                 source: str | None = None, vae_batch: int | None = None) -> None:
        cfg = vae.config
        self.vae = vae
        self.vae_scale_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)
        self.latent_channels = int(net.config.in_channels)
        size = net.config.sample_size
        f = self.vae_scale_factor
        pixel_size = tuple(int(v) * f for v in size) if isinstance(size, list | tuple) else int(size) * f
        super().__init__(net, sde, prediction, (-1.0, 1.0), channels=int(cfg.in_channels), sample_size=pixel_size,
                         digest=digest, source=source, classes=classes, text=text)
        if vae_batch is not None and (isinstance(vae_batch, bool) or not isinstance(vae_batch, int) or vae_batch < 1):
            raise SDEditError(f"vae_batch must be None or an integer >= 1, got {vae_batch!r}")
        self.vae_batch = vae_batch

    # -- pixels <-> latents --------------------------------------------------------------------
    @torch.no_grad()
    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of pixels [B, C, H, W] in [0, 1]: the posterior mean times scaling_factor, float32."""
        x = pixels.to(device=self.device, dtype=torch.float32) * 2.0 - 1.0
        return self._sliced(lambda v: self.vae.encode(v).latent_dist.mean, x) * self.scaling_factor

    @torch.no_grad()
    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (unclamped, float32) of latents [B, latent_channels, h, w]."""
        images = self._sliced(lambda v: self.vae.decode(v).sample, x / self.scaling_factor)
        return (images + 1.0) / 2.0

    def mask_to_model_space(self, edit_mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, H/f, W/f]: each latent cell takes the largest mask value of its pixels (any channel)."""
        f = self.vae_scale_factor
        m = edit_mask.to(device=self.device, dtype=torch.float32).amax(dim=1, keepdim=True)
        return torch.nn.functional.max_pool2d(m, kernel_size=f, stride=f)

    def check_pixel_size(self, height: int, width: int) -> None:
        f = self.vae_scale_factor
        if height % f or width % f:
            raise SDEditError(f"guide size {height}x{width} is not a multiple of the VAE's {f} pixels per latent "
                              f"cell; resize or pad guides to multiples of {f}")

    def state_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        return self.latent_channels, int(height) // f, int(width) // f

    def use_channels_last(self) -> None:
        super().use_channels_last()
        self.vae = self.vae.to(memory_format=torch.channels_last)

    # -- the VAE, in slices ----------------------------------------------------------------------
    def _sliced(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn over x in slices of vae_batch items, float32 out; out of device memory, halve and retry.

        (that error is an accelerator's; the CPU allocator raises a plain RuntimeError.)"""
        while True:
            size = self.vae_batch or max(x.shape[0], 1)
            try:
                return torch.cat([self._vae_call(fn, x[i : i + size]) for i in range(0, x.shape[0], size)])
            except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError in torch >= 2.5)
                if size == 1:
                    raise
                if x.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.vae_batch = max(1, size // 2)

    def _vae_call(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.vae.parameters()).dtype
        xin = x.to(vae_dtype)
        if self.channels_last:
            xin = xin.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            out = fn(xin)
        return out.float().contiguous()
