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


class ClassGaussianEpsNet:
    """Exact E[eps | x_t, c] when class c's data is N(means[c], VAR) per pixel; the last index is the null label.

    Giving the null label Gaussian data of the same variance makes guidance closed-form: the guided eps
    eps_u + w (eps_c - eps_u) is then exactly the eps of N(mu_u + w (mu_c - mu_u), VAR).
    Records the batch size and labels of every call.
    """

    def __init__(self, means: list[float], var: float = VAR, n: int = 1000) -> None:
        self.means = torch.tensor(means, dtype=torch.float64)
        self.exact = ExactEpsNet(0.0, var, n)
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        assert class_labels is not None and class_labels.shape == (x.shape[0],)
        self.calls.append(class_labels.clone())
        mu = self.means[class_labels].view(-1, 1, 1, 1)
        i = round(float(t[0]))
        ab = float(self.exact.alpha_bar[i])
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        return (s * (x.double() - a * mu) / (a * a * self.exact.var + s * s)).float()


def guided_mean(mu_c: float, mu_u: float, w: float) -> float:
    """The data mean whose exact eps is the guided eps_u + w (eps_c - eps_u), for equal variances."""
    return mu_u + w * (mu_c - mu_u)
