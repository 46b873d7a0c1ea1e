"""A condition bound into the model the samplers see, with classifier-free guidance (Ho & Salimans 2021).

The samplers call `predict(x, t)` and never ask what the model is conditioned on: `ScoreModel.bind`
returns a `ConditionedModel` that carries the batch's network inputs (`class_labels` for a
class-conditional model, `encoder_hidden_states` for a text-conditional one: sdedit_kernel.labels and
sdedit_kernel.text build them) and each item's guidance weight w:

    eps = eps_u + w (eps_c - eps_u),   x0 = (x - s eps) / a,

in eps space whatever the network predicts. w = 1 is the plain conditional model, w = 0 the
unconditional one, w > 1 guided. (Ho & Salimans write (1 + w') eps_c - w' eps_u: our w = 1 + w'.)
Unlike diffusers, which skips guidance for every w <= 1, we apply the formula for w in [0, 1) too.
Both halves run in one network call on a batch of 2B; only when every item's w is 1 is the
unconditional half skipped. The posterior and solver maths are untouched: guidance changes the
model function only, so the closed-form checks hold for the guided eps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # model.py imports this module
    from .model import ScoreModel
    from .sde import VESDE, VPSDE


@dataclass(frozen=True)
class Condition:
    """A batch's condition: network inputs for the conditional half and, when any item is guided, for the
    unconditional half, plus each item's weight w ([B] float32; None: no item is guided).

    Each input is a tensor whose first dimension is the batch (e.g. `class_labels` [B]); the two
    halves are concatenated along it for the single 2B network call.
    """

    inputs: Mapping[str, torch.Tensor]
    null_inputs: Mapping[str, torch.Tensor] | None = None
    scale: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        return self.null_inputs is not None


class ConditionedModel:
    """A ScoreModel with a batch's condition bound in: what the samplers see when a model is conditioned.

    Its `predict(x, t)` has ScoreModel's contract; it is only valid for the batch it was bound for.
    """

    def __init__(self, model: ScoreModel, condition: Condition) -> None:
        self.model = model
        self.condition = condition
        self._w: torch.Tensor | None = None  # w as [B, 1, 1, 1] on the state's device, moved once

    @property
    def sde(self) -> VPSDE | VESDE:
        return self.model.sde

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) of the conditioned (and, where w != 1, guided) model at (x, t)."""
        c = self.condition
        if not c.guided:
            return self.model.predict(x, t, **c.inputs)
        both = {k: torch.cat([v, c.null_inputs[k]]) for k, v in c.inputs.items()}
        out = self.model.network_output(torch.cat([x, x]), t, **both)
        b = x.shape[0]
        x0_c, eps_c = self.model.x0_eps(out[:b], x, t)
        _, eps_u = self.model.x0_eps(out[b:], x, t)
        if self._w is None or self._w.device != x.device:
            self._w = c.scale.to(x.device).view(-1, 1, 1, 1)
        w = self._w
        eps = eps_u + w * (eps_c - eps_u)
        a, s = self.model.sde.marginal(t)
        x0 = (x - s * eps) / a
        plain = w == 1  # exactly the conditional model's own prediction, whatever its batch mates' w
        return torch.where(plain, x0_c, x0), torch.where(plain, eps_c, eps)

    def __repr__(self) -> str:
        return f"ConditionedModel({self.model!r}, guided={self.condition.guided})"
