"""The maths against closed-form Gaussian cases: exact score, exact SDEdit output law."""

from __future__ import annotations

import math

import pytest
import torch
from gaussian import MU, VAR, ExactEpsNet, ExactScoreNet, flow_map, posterior_law, vp_scaled_sigma2

from sdedit_kernel import VESDE, VPSDE, ScoreModel, sdedit

SHAPE = (4, 1, 64, 64)  # 16,384 iid pixels with the same guide value
Y_PIX = 0.65  # guide pixel; model space 2 * 0.65 - 1 = 0.3
T0 = 0.5


def vp_model():
    return ScoreModel(ExactEpsNet(), VPSDE.linear())


def ve_model():
    return ScoreModel(ExactScoreNet(), VESDE(), prediction="score", data_range=(0.0, 1.0))


def test_perturbation_matches_marginal():
    sde = VPSDE.linear()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    for T in (1, 100, 500, 1000):
        a, s = sde.marginal(T / 1000)
        assert a == pytest.approx(math.sqrt(ab[T - 1]), rel=1e-12)
        assert s == pytest.approx(math.sqrt(1 - ab[T - 1]), rel=1e-10)
    assert sde.marginal(0.0) == (1.0, 0.0)
    ve = VESDE()
    assert ve.marginal(0.5)[1] == pytest.approx(0.01 * (380 / 0.01) ** 0.5)
    # the first state sdedit builds is a(t0) y + s(t0) z: check its law with a model that stops at once
    seen = {}

    def grab(p, x):
        seen["x"] = x

    class Stop(Exception):
        pass

    class Spy:
        def __call__(self, x, t):
            seen["xt"] = x.clone()
            raise Stop

    with pytest.raises(Stop):
        sdedit(ScoreModel(Spy(), sde), torch.full(SHAPE, Y_PIX), t0=T0, steps=1, callback=grab,
               generator=torch.Generator().manual_seed(0))
    xt = seen["xt"]
    a, s = sde.marginal(T0)
    assert xt.mean().item() == pytest.approx(a * 0.3, abs=4 * s / 128)
    assert xt.var().item() == pytest.approx(s * s, rel=0.05)


def run(model, sampler, steps, t0=T0, y=Y_PIX, seed=0, **opts):
    g = torch.Generator().manual_seed(seed)
    out = sdedit(model, torch.full(SHAPE, y), t0=t0, steps=steps, sampler=sampler, generator=g, **opts)
    return out, torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))  # z: the first draw


def law_error(out_model_space: torch.Tensor, mean: float, var: float) -> float:
    """|mean error| / sd + |var ratio - 1|: 0 for an exact law, ~0.03 from Monte Carlo alone here."""
    m, v = out_model_space.mean().item(), out_model_space.var().item()
    return abs(m - mean) / math.sqrt(var) + abs(v / var - 1)


SDE_SAMPLERS = [("ancestral", {}), ("euler_maruyama", {}), ("ddim", {"eta": 1.0}), ("dpmpp_2m_sde", {}),
                ("pc", {"snr": 0.01})]


@pytest.mark.parametrize("sampler,opts", SDE_SAMPLERS)
def test_vp_sde_samplers_converge_to_posterior(sampler, opts):
    model = vp_model()
    mean, var = posterior_law(0.3, vp_scaled_sigma2(T0), MU, VAR)
    errors = {}
    for steps in (5, 500):
        out, _ = run(model, sampler, steps, **opts)
        errors[steps] = law_error(out * 2 - 1, mean, var)
    assert errors[500] < 0.08, errors
    assert errors[500] <= errors[5] + 0.02, errors


@pytest.mark.parametrize("sampler,opts", SDE_SAMPLERS)
def test_ve_sde_samplers_converge_to_posterior(sampler, opts):
    model = ve_model()
    t0 = 0.3
    sigma2 = VESDE().sigma(t0) ** 2
    mean, var = posterior_law(0.6, sigma2, 0.5, VAR)
    out, _ = run(model, sampler, 600, t0=t0, y=0.6, **opts)
    assert law_error(out, mean, var) < 0.08


def test_pc_corrector_pulls_towards_the_marginal():
    """Langevin at time t samples p_t, not p(x_t | guide): a large snr forgets the guide (documented)."""
    model = ve_model()
    sigma2 = VESDE().sigma(0.3) ** 2
    mean, _ = posterior_law(0.6, sigma2, 0.5, VAR)
    near, _ = run(model, "pc", 300, t0=0.3, y=0.6, snr=0.01)
    far, _ = run(model, "pc", 300, t0=0.3, y=0.6, snr=0.3)
    assert abs(far.mean().item() - 0.5) < abs(near.mean().item() - 0.5) < abs(mean - 0.5) + 0.003


@pytest.mark.parametrize("sampler,opts,order", [("ddim", {"eta": 0.0}, 1), ("dpmpp_2m", {}, 2)])
def test_vp_ode_samplers_converge_to_flow_map(sampler, opts, order):
    model = vp_model()
    sigma2 = vp_scaled_sigma2(T0)
    errs = []
    for steps in (5, 25, 100, 500):
        out, z = run(model, sampler, steps, **opts)
        errs.append((out * 2 - 1 - flow_map(0.3, z, sigma2, MU, VAR)).abs().max().item())
    assert errs == sorted(errs, reverse=True), errs
    # x5 steps divides the error by at least ~5 (first order); the second-order solver does better
    # (its last steps are large in log-SNR on the discrete grid, so it does not reach a clean x25)
    assert errs[-2] / errs[-1] > 3.5, errs
    assert errs[-1] < (1e-2 if order == 1 else 2e-3), errs
    assert errs[2] < (0.05 if order == 1 else 0.015), errs


def test_ve_ode_sampler_converges_to_flow_map():
    model = ve_model()
    t0 = 0.3
    sigma2 = VESDE().sigma(t0) ** 2
    out, z = run(model, "dpmpp_2m", 400, t0=t0, y=0.6)
    # VE time 0 is sigma_min, then one denoising step to the data: the flow to sigma_min, then Tweedie
    smin2 = VESDE().sigma_min ** 2
    at_min = 0.5 + math.sqrt((VAR + smin2) / (VAR + sigma2)) * (0.6 + math.sqrt(sigma2) * z - 0.5)
    expected = 0.5 + VAR / (VAR + smin2) * (at_min - 0.5)
    assert (out - expected).abs().max().item() < 5e-4


def test_passes_restart_from_previous_output():
    """Two passes equal one pass fed its own output, with the generator carried on."""
    model = vp_model()
    g = torch.Generator().manual_seed(3)
    guide = torch.full((1, 1, 8, 8), Y_PIX)
    two = sdedit(model, guide, t0=0.2, passes=2, generator=g)
    g = torch.Generator().manual_seed(3)
    seen = []
    one = sdedit(model, guide, t0=0.2, generator=g, callback=lambda p, x: seen.append(x))
    again = sdedit(model, one, t0=0.2, generator=g)
    # the second pass starts from the unclamped model-space state; with this data there is no clamping
    assert seen[0].abs().max() < 1
    assert torch.allclose(two, again, atol=1e-5)
