"""ScoreModel: one contract for any network, so samplers never ask what kind of model they run.

The network is called as diffusers' UNet2DModel is, `net(x, t)`, returning a tensor or an object
with `.sample`. Whatever it predicts (epsilon, the clean sample, v, or the score), `predict`
returns both the clean-data estimate x0 and the noise estimate eps at time t, in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import SDEditError
from .sde import VESDE, VPSDE

PREDICTIONS = ("epsilon", "sample", "v_prediction", "score")


class ScoreModel:
    """A network plus the SDE it was trained with and the data range it expects."""

    def __init__(
        self,
        net: Any,
        sde: VPSDE | VESDE,
        prediction: str = "epsilon",
        data_range: tuple[float, float] = (-1.0, 1.0),
        *,
        channels: int | None = None,
        sample_size: int | tuple[int, int] | None = None,
        digest: str | None = None,
        source: str | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise SDEditError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "v_prediction" and not isinstance(sde, VPSDE):
            raise SDEditError("v_prediction is defined for variance-preserving (VP) models only")
        lo, hi = (float(v) for v in data_range)
        if not hi > lo:
            raise SDEditError(f"data_range must be (low, high) with high > low, got {data_range}")
        self.net = net
        self.sde = sde
        self.prediction = prediction
        self.data_range = (lo, hi)
        cfg = getattr(net, "config", None)
        self.channels = channels if channels is not None else getattr(cfg, "in_channels", None)
        self.sample_size = sample_size if sample_size is not None else getattr(cfg, "sample_size", None)
        self.digest = digest
        self.source = source
        first = next(iter(net.parameters()), None) if hasattr(net, "parameters") else None
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None else torch.float32
        # Execution options (see sdedit_kernel.execution.accelerate); the defaults are plain fp32 eager.
        self.autocast: torch.dtype | None = None
        self.channels_last = False
        self.cudagraphs = False

    # -- data space ---------------------------------------------------------------------------
    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return pixels.to(device=self.device, dtype=torch.float32) * (hi - lo) + lo

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.data_range
        return (x - lo) / (hi - lo)

    # -- the contract -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) for x = a(t) x0 + s(t) eps, t > 0; both float32 like x."""
        a, s = self.sde.marginal(t)
        if s <= 0:
            raise SDEditError(f"the model cannot be evaluated at t={t}: there is no noise there")
        tt = torch.full((x.shape[0],), self.sde.model_time(t), device=x.device, dtype=torch.float32)
        out = self._call_net(x, tt)
        if out.shape != x.shape:
            raise SDEditError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        if self.prediction == "epsilon":
            eps = out
            x0 = (x - s * eps) / a
        elif self.prediction == "sample":
            x0 = out
            eps = (x - a * x0) / s
        elif self.prediction == "v_prediction":  # v = a eps - s x0 with a^2 + s^2 = 1
            x0 = a * x - s * out
            eps = s * x + a * out
        else:  # score = -eps / s
            eps = -s * out
            x0 = (x + s * s * out) / a
        return x0, eps

    def _call_net(self, x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        """The network's output at (x, tt) as float32; only the network runs in reduced precision."""
        xin = x.to(self.dtype)
        if self.channels_last:
            xin = xin.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            if self.cudagraphs:  # each call is a new step: the graph may reuse the last output's memory
                torch.compiler.cudagraph_mark_step_begin()
            out = self.net(xin, tt)
        out = out.sample if hasattr(out, "sample") else out
        if self.cudagraphs:
            out = out.clone()  # never hand out memory that the next replay overwrites
        return out.float().contiguous()

    def __repr__(self) -> str:
        return (f"ScoreModel({type(self.net).__name__}, {self.sde!r}, prediction={self.prediction!r}, "
                f"data_range={self.data_range}, source={self.source!r})")
