"""Noise schedules as SDE objects: the marginal (mean scale, std) at any time t in [0, 1].

Every schedule is written as x_t = a(t) x0 + s(t) z. Time 0 is the data (a = 1, s = 0); the
samplers' last step lands there. Quantities are computed in float64 on scalars: the grid is shared
by the whole batch, so the schedule maths never runs in the network's (possibly reduced) precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SDEditError


def _check_time(t: float) -> float:
    t = float(t)
    if not (0.0 <= t <= 1.0):
        raise SDEditError(f"time {t} is outside [0, 1]")
    return t


class VPSDE:
    """Variance-preserving SDE (DDPM): a(t) = sqrt(alpha_bar(t)), s(t) = sqrt(1 - alpha_bar(t)).

    A discrete schedule of N betas places training index i at time t = (i + 1) / N, so
    `t0 = T / N` starts at index T - 1 as the official SDEdit code does; log alpha_bar is
    interpolated linearly between those knots (and is 0 at t = 0), so any t in [0, 1] is valid and
    a network receives the fractional index t * N - 1.
    """

    kind = "vp"

    def __init__(self, betas: torch.Tensor | list[float], *, continuous: tuple[float, float] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if continuous is None:
            if betas.numel() < 1:
                raise SDEditError("VPSDE needs at least one beta")
            if not bool(((betas > 0) & (betas < 1)).all()):
                raise SDEditError("VPSDE betas must lie in (0, 1)")
        self.betas = betas
        self.num_train_timesteps = int(betas.numel())
        self.continuous = continuous
        knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self._log_alpha_bar_knots = knots  # at t = k / N, k = 0..N

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000) -> VPSDE:
        """The official DDPM/SDEdit schedule: betas evenly spaced from beta_start to beta_end."""
        _check_schedule(beta_start, beta_end, num_train_timesteps)
        return cls(torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012,
                      num_train_timesteps: int = 1000) -> VPSDE:
        """diffusers' "scaled_linear": betas evenly spaced in sqrt(beta)."""
        _check_schedule(beta_start, beta_end, num_train_timesteps)
        root = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64)
        return cls(root**2)

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> VPSDE:
        """Nichol & Dhariwal's cosine schedule (diffusers' "squaredcos_cap_v2")."""
        if num_train_timesteps < 1:
            raise SDEditError("num_train_timesteps must be >= 1")

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        n = num_train_timesteps
        betas = [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]
        return cls(betas)

    @classmethod
    def continuous_linear(cls, beta_min: float = 0.1, beta_max: float = 20.0,
                          num_train_timesteps: int = 1000) -> VPSDE:
        """score_sde's continuous VP SDE, beta(t) = beta_min + t (beta_max - beta_min).

        Networks trained on it (score_sde's DDPM++ "vpsde") receive t * (N - 1), N = 1000.
        """
        if not (0 < beta_min < beta_max):
            raise SDEditError("continuous VP SDE needs 0 < beta_min < beta_max")
        sde = cls(torch.full((num_train_timesteps,), 0.5), continuous=(beta_min, beta_max))
        return sde

    # -- the marginal -------------------------------------------------------------------------
    def log_alpha_bar(self, t: float) -> float:
        t = _check_time(t)
        if self.continuous is not None:
            b0, b1 = self.continuous
            return -0.5 * t * t * (b1 - b0) - t * b0
        pos = t * self.num_train_timesteps
        k = min(int(math.floor(pos)), self.num_train_timesteps - 1)
        frac = pos - k
        lo, hi = self._log_alpha_bar_knots[k].item(), self._log_alpha_bar_knots[k + 1].item()
        return lo + frac * (hi - lo)

    def marginal(self, t: float) -> tuple[float, float]:
        """(a, s): x_t = a x0 + s z."""
        lab = self.log_alpha_bar(t)
        return math.exp(0.5 * lab), math.sqrt(-math.expm1(lab))

    def transition(self, t: float, s: float) -> tuple[float, float]:
        """(alpha, sigma^2) of the forward step x_t = alpha x_s + sigma z, for t > s, without cancellation."""
        d = self.log_alpha_bar(t) - self.log_alpha_bar(s)
        return math.exp(0.5 * d), -math.expm1(d)

    def beta(self, t: float) -> float:
        """beta(t) = -d log alpha_bar / dt (the left segment's slope for a discrete schedule)."""
        t = _check_time(t)
        if self.continuous is not None:
            b0, b1 = self.continuous
            return b0 + t * (b1 - b0)
        n = self.num_train_timesteps
        k = min(max(int(math.ceil(t * n)) - 1, 0), n - 1)
        return -n * (self._log_alpha_bar_knots[k + 1] - self._log_alpha_bar_knots[k]).item()

    def drift_and_diffusion(self, t: float) -> tuple[float, float]:
        """(f, g^2) of the forward SDE dx = f x dt + g dw."""
        b = self.beta(t)
        return -0.5 * b, b

    def model_time(self, t: float) -> float:
        """What the network is conditioned on: the (fractional) training index."""
        if self.continuous is not None:
            return t * (self.num_train_timesteps - 1)
        return t * self.num_train_timesteps - 1.0

    def default_steps(self, t0: float) -> int:
        """The official count: one step per training index between t0 and 0, round(t0 * N)."""
        return int(round(t0 * self.num_train_timesteps))

    def time_grid(self, t0: float, steps: int) -> list[float]:
        return time_grid(t0, steps)

    def __repr__(self) -> str:
        if self.continuous is not None:
            return f"VPSDE.continuous_linear(beta_min={self.continuous[0]}, beta_max={self.continuous[1]})"
        return f"VPSDE(N={self.num_train_timesteps}, beta[0]={self.betas[0]:.3g}, beta[-1]={self.betas[-1]:.3g})"


@dataclass(frozen=True)
class VESDE:
    """Variance-exploding SDE (NCSN++): a = 1, s(t) = sigma_min (sigma_max / sigma_min)^t for t > 0.

    Time 0 is the clean data (s = 0), so the last reverse step is a denoising step from sigma(t_1)
    to 0, as score_sde's "noise removal". Networks receive sigma and return the score.
    """

    sigma_min: float = 0.01
    sigma_max: float = 380.0
    num_train_timesteps: int = 2000
    kind = "ve"

    def __post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max) or not math.isfinite(self.sigma_max):
            raise SDEditError(f"VESDE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.num_train_timesteps < 1:
            raise SDEditError("VESDE num_train_timesteps must be >= 1")

    def sigma(self, t: float) -> float:
        t = _check_time(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def marginal(self, t: float) -> tuple[float, float]:
        t = _check_time(t)
        return 1.0, (0.0 if t == 0.0 else self.sigma(t))

    def transition(self, t: float, s: float) -> tuple[float, float]:
        st, ss = self.marginal(t)[1], self.marginal(s)[1]
        return 1.0, st * st - ss * ss

    def drift_and_diffusion(self, t: float) -> tuple[float, float]:
        sig = self.sigma(t)
        return 0.0, 2.0 * sig * sig * math.log(self.sigma_max / self.sigma_min)

    def model_time(self, t: float) -> float:
        return self.sigma(t)

    def default_steps(self, t0: float) -> int:
        return int(round(t0 * self.num_train_timesteps))

    def time_grid(self, t0: float, steps: int) -> list[float]:
        return time_grid(t0, steps)


def time_grid(t0: float, steps: int) -> list[float]:
    """`steps + 1` times evenly spaced from t0 down to exactly 0 (float64 Python floats)."""
    return [t0 * (steps - k) / steps for k in range(steps + 1)]


def _check_schedule(beta_start: float, beta_end: float, n: int) -> None:
    if n < 1:
        raise SDEditError("num_train_timesteps must be >= 1")
    if not (0 < beta_start <= beta_end < 1):
        raise SDEditError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")


SDE = VPSDE | VESDE
