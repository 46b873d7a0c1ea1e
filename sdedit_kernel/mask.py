"""The kept region of a masked edit: `edit_mask` 1 = regenerate, 0 = keep the guide.

At every step the kept region is the guide re-noised to the level the generated region has just
reached, with the same noise draw z used to perturb it at t0 (the official code re-noises one level
too high, which leaves noise dots: its PR #10). At t = 0 that is the guide itself.
"""

from __future__ import annotations

import torch

from .sde import VESDE, VPSDE


def keep_region(sde: VPSDE | VESDE, edit_mask: torch.Tensor, y: torch.Tensor, z: torch.Tensor):
    """`after_step(x, t)` that replaces the kept region by a(t) y + s(t) z."""

    def after_step(x: torch.Tensor, t: float) -> torch.Tensor:
        a, s = sde.marginal(t)
        known = y if s == 0.0 and a == 1.0 else a * y + s * z
        return torch.lerp(known, x, edit_mask)

    return after_step


def composite(guide: torch.Tensor, generated: torch.Tensor, edit_mask: torch.Tensor | None) -> torch.Tensor:
    """Generated pixels where the mask is 1, the guide's own pixels (bit-exact) where it is 0."""
    if edit_mask is None:
        return generated
    return torch.lerp(guide, generated, edit_mask.to(guide.dtype))
