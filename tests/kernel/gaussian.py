"""Closed-form Gaussian data: exact networks and the exact SDEdit output law, independent of the kernel."""

from __future__ import annotations

import math

import torch

MU, VAR = 0.0, 0.01  # data ~ N(MU, VAR) per pixel, in the model's space


class ExactEpsNet:
    """Exact E[eps | x_t] for Gaussian data under the linear DDPM schedule; accepts integer indices only."""

    def __init__(self, mu: float = MU, var: float = VAR, n: int = 1000) -> None:
        betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - betas, 0)
        self.mu, self.var = mu, var

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = float(t[0])
        assert abs(i - round(i)) < 1e-6 and 0 <= round(i) < len(self.alpha_bar), f"index {i}"
        ab = float(self.alpha_bar[round(i)])
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        return s * (x - a * self.mu) / (a * a * self.var + s * s)


class ExactScoreNet:
    """Exact score of Gaussian data perturbed to sigma (VE); conditioned on sigma itself."""

    def __init__(self, mu: float = 0.5, var: float = VAR) -> None:
        self.mu, self.var = mu, var

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = sigma.double().view(-1, 1, 1, 1)
        return (-(x.double() - self.mu) / (self.var + sig * sig)).float()


def vp_scaled_sigma2(t0: float, n: int = 1000) -> float:
    """sigma~^2 = (1 - abar) / abar at t0 = T / N, the official start index T - 1."""
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
    ab = float(torch.cumprod(1 - betas, 0)[round(t0 * n) - 1])
    return (1 - ab) / ab


def posterior_law(y: float, sigma2: float, mu: float, var: float) -> tuple[float, float]:
    """Mean and variance of SDEdit's output x0 ~ p(x0 | y + sigma z), over z: exact reverse-SDE solution."""
    k = var / (var + sigma2)
    return mu + k * (y - mu), k * sigma2 * (1 + k)


def flow_map(y: float | torch.Tensor, z: torch.Tensor, sigma2: float, mu: float, var: float) -> torch.Tensor:
    """The probability-flow ODE's map from y + sigma z at t0 to t = 0, for Gaussian data."""
    return mu + math.sqrt(var / (var + sigma2)) * (y + math.sqrt(sigma2) * z - mu)
