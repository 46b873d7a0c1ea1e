"""Every wrong argument is a clear error, never a silent no-op."""

from __future__ import annotations

import pytest
import torch

from sdedit_kernel import SDEditError, model_calls, resolve_steps, sdedit, validate_sampler_options

G = torch.rand(1, 3, 16, 16)


@pytest.mark.parametrize("kwargs,match", [
    ({"t0": 0.0}, "t0 must be"),
    ({"t0": 1.5}, "t0 must be"),
    ({"t0": float("nan")}, "t0 must be"),
    ({"t0": 0.0004}, "below one training step"),
    ({"t0": 0.5, "steps": 0}, "steps must be"),
    ({"t0": 0.5, "steps": 2.5}, "steps must be"),
    ({"t0": 0.5, "sampler": "heun"}, "unknown sampler 'heun'"),
    ({"t0": 0.5, "sampler": "ancestral", "eta": 0.5}, "takes no option eta"),
    ({"t0": 0.5, "sampler": "ddim", "snr": 0.1}, "takes no option snr"),
    ({"t0": 0.5, "sampler": "ddim", "eta": -1}, "must be a finite number"),
    ({"t0": 0.5, "passes": 0}, "passes must be"),
    ({"t0": 0.5, "edit_mask": torch.ones(1, 2, 16, 16)}, "edit_mask must be"),
    ({"t0": 0.5, "edit_mask": torch.full((1, 1, 16, 16), 2.0)}, "edit_mask values"),
    ({"t0": 0.5, "generator": [torch.Generator(), torch.Generator()]}, "one per item"),
])
def test_bad_arguments(tiny_model, kwargs, match):
    with pytest.raises(SDEditError, match=match):
        sdedit(tiny_model, G, steps=kwargs.pop("steps", 1) if "steps" in kwargs else 1, **kwargs) \
            if "steps" not in kwargs and "below one training step" not in match else \
            sdedit(tiny_model, G, **kwargs)


@pytest.mark.parametrize("guide,match", [
    (torch.rand(3, 16, 16), r"\[B, C, H, W\]"),
    (torch.rand(1, 1, 16, 16), "1 channels, the model takes 3"),
    (torch.full((1, 3, 16, 16), 1.5), r"in \[0, 1\]"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating point"),
])
def test_bad_guides(tiny_model, guide, match):
    with pytest.raises(SDEditError, match=match):
        sdedit(tiny_model, guide, t0=0.5, steps=1)


def test_default_steps_and_calls(tiny_model):
    assert resolve_steps(tiny_model, 0.5) == 500  # official: round(t0 * 1000)
    assert resolve_steps(tiny_model, 0.5, sampler="dpmpp_2m") == 25
    assert resolve_steps(tiny_model, 0.5, steps=7, sampler="ddim") == 7
    assert model_calls("ancestral", 500) == 500
    assert model_calls("pc", 10, passes=3) == 60
    assert model_calls("pc", 10, corrector_steps=2) == 30
    assert validate_sampler_options("ddim", {}) == {"eta": 0.0}
    with pytest.raises(SDEditError):
        validate_sampler_options("pc", {"corrector_steps": 1.5})


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp_2m_sde", "euler_maruyama", "pc"])
@pytest.mark.parametrize("steps", [None, 5])
def test_t0_below_one_training_step_is_refused_for_every_sampler(tiny_model, sampler, steps):
    """round(t0 * 1000) = 0: below any noise level the network was trained at, whatever the sampler's
    own step count (dpmpp_2m_sde would otherwise run its 10 steps) or an explicit one."""
    with pytest.raises(SDEditError, match="below one training step"):
        sdedit(tiny_model, G, t0=0.0001, sampler=sampler, steps=steps)
