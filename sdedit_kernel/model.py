"""ScoreModel: one contract for any network, so samplers never ask what kind of model they run.

The network is called as diffusers' UNet2DModel is, `net(x, t)` (plus `class_labels=` for a
class-conditional one, `encoder_hidden_states=` for a text-conditional one), returning a tensor or an
object with `.sample`. Whatever it predicts (epsilon, the clean sample, v, or the score), `predict`
returns both the clean-data estimate x0 and the noise estimate eps at time t, in float32. A
conditional model is first bound to a batch's condition (`bind`), which gives the samplers an object
with the same `predict(x, t)`. The model also owns the map between pixels and the space it runs in
(`to_model_space`, `to_pixels`, `mask_to_model_space`): the identity up to scaling here, a VAE for a
latent model (sdedit_kernel.latent), so `sdedit` never asks which kind it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .errors import SDEditError
from .guidance import ConditionedModel
from .labels import ClassLabels, Label, classes_from_config, guidance_scales
from .sde import VESDE, VPSDE

if TYPE_CHECKING:  # text.py imports guidance, not this module; the import is for annotations only
    from .text import Prompts, TextEncoder

PREDICTIONS = ("epsilon", "sample", "v_prediction", "score")


class Denoiser(Protocol):
    """What a sampler needs: the SDE, and (x0_hat, eps_hat) at (x, t). A ScoreModel, or one bound to a condition."""

    @property
    def sde(self) -> VPSDE | VESDE: ...

    def predict(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]: ...


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
        classes: ClassLabels | None = None,
        text: TextEncoder | None = None,
    ) -> None:
        """classes: the labels of a class-conditional network; None reads them from its config
        (num_class_embeds labels, no names, no null label), or none for an unconditional network.
        text: the prompt encoder of a text-conditional network (sdedit_kernel.text)."""
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
        self.classes = _check_classes(classes, cfg)
        if text is not None and self.classes is not None:
            raise SDEditError("a network conditioned on both text and class labels is not supported")
        self.text = text
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

    # -- class labels -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int | None:
        """How many label indices the network takes (its num_class_embeds, null label included)."""
        return self.classes.num_classes if self.classes else None

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.classes.names if self.classes else None

    @property
    def null_label(self) -> int | None:
        """The label of the unconditional model (None: the model has none, or is unconditional)."""
        return self.classes.null_label if self.classes else None

    def resolve_label(self, label: int | str) -> int:
        """The index of a label given as an index or a class name."""
        if self.classes is None:
            raise SDEditError(f"label {label!r} given, but this model is not class-conditional")
        return self.classes.resolve(label)

    @property
    def conditioning(self) -> str | None:
        """"text", "class" or None (unconditional)."""
        return "text" if self.text is not None else "class" if self.classes is not None else None

    @property
    def can_guide(self) -> bool:
        """Whether classifier-free guidance can run: a text model (the empty prompt is its unconditional
        model) or a class model with a null label."""
        return self.text is not None or self.null_label is not None

    def bind(self, batch: int, *, labels: torch.Tensor | Sequence[Label] | None = None,
             guidance_scale: float | torch.Tensor | Sequence[float] = 1.0,
             prompts: Prompts = None, negative_prompts: Prompts = None) -> Denoiser:
        """The model the samplers see for one batch: this one, or a ConditionedModel with the condition bound.

        labels (class-conditional): [B] indices, names or None (unlabelled: the null label); None for
        all unlabelled. prompts / negative_prompts (text-conditional): one string for every item or
        one per item, None entries the empty prompt (sdedit_kernel.text). guidance_scale: w, one for
        the batch or one per item (sdedit_kernel.guidance).
        """
        scales = guidance_scales(guidance_scale, batch)
        if self.text is not None:
            if labels is not None:
                raise SDEditError("labels were given, but this model is text-conditional: give prompts")
            return ConditionedModel(self, self.text.condition(prompts, negative_prompts, scales, self.dtype))
        if prompts is not None or negative_prompts is not None:
            raise SDEditError("prompts were given, but this model is not text-conditional")
        if self.classes is None:
            if labels is not None:
                raise SDEditError("labels were given, but this model is not class-conditional")
            if bool((scales != 1).any()):
                raise SDEditError("guidance_scale != 1 needs a class-conditional model; this one is unconditional")
            return self
        return ConditionedModel(self, self.classes.condition(labels, scales, self.device))

    # -- pixels <-> the space the network runs in ------------------------------------------------
    def check_pixel_size(self, height: int, width: int) -> None:
        """Raise SDEditError for a guide size the model cannot run (any size suits a pixel model)."""

    def state_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """The (channels, height, width) of one item's state for guides of height x width pixels."""
        return int(self.channels), int(height), int(width)

    def mask_to_model_space(self, edit_mask: torch.Tensor) -> torch.Tensor:
        """The edit mask [B, C, H, W] on the state's grid (the pixel grid itself here)."""
        return edit_mask.to(device=self.device, dtype=torch.float32)

    def use_channels_last(self) -> None:
        """Run the network(s) with channels-last memory (sdedit_kernel.execution)."""
        self.net = self.net.to(memory_format=torch.channels_last)
        self.channels_last = True

    # -- the contract -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: float, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) for x = a(t) x0 + s(t) eps, t > 0; both float32 like x.

        inputs: the network's condition (e.g. class_labels [B]); `bind` supplies them."""
        return self.x0_eps(self.network_output(x, t, **inputs), x, t)

    @torch.no_grad()
    def network_output(self, x: torch.Tensor, t: float, **inputs: torch.Tensor) -> torch.Tensor:
        """The network's raw prediction at (x, t), float32, in whatever form it predicts."""
        _, s = self.sde.marginal(t)
        if s <= 0:
            raise SDEditError(f"the model cannot be evaluated at t={t}: there is no noise there")
        if self.conditioning is not None and not inputs:
            what = "prompts" if self.text is not None else "labels"
            raise SDEditError(f"this model is {self.conditioning}-conditional: bind {what} first "
                              f"(sdedit(..., {what}=...) or model.bind(batch, {what}=...))")
        tt = torch.full((x.shape[0],), self.sde.model_time(t), device=x.device, dtype=torch.float32)
        out = self._call_net(x, tt, inputs)
        if out.shape != x.shape:
            raise SDEditError(f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        return out

    def x0_eps(self, out: torch.Tensor, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network's output at (x, t), whatever it predicts."""
        a, s = self.sde.marginal(t)
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

    def _call_net(self, x: torch.Tensor, tt: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's output at (x, tt) as float32; only the network runs in reduced precision."""
        xin = x.to(self.dtype)
        if self.channels_last:
            xin = xin.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            if self.cudagraphs:  # each call is a new step: the graph may reuse the last output's memory
                torch.compiler.cudagraph_mark_step_begin()
            out = self.net(xin, tt, **inputs)
        out = out.sample if hasattr(out, "sample") else out
        if self.cudagraphs:
            out = out.clone()  # never hand out memory that the next replay overwrites
        return out.float().contiguous()

    def __repr__(self) -> str:
        classes = f", classes={self.classes!r}" if self.classes is not None else ""
        classes += ", text" if self.text is not None else ""
        return (f"{type(self).__name__}({type(self.net).__name__}, {self.sde!r}, prediction={self.prediction!r}, "
                f"data_range={self.data_range}, source={self.source!r}{classes})")


def _check_classes(classes: ClassLabels | None, cfg: Any) -> ClassLabels | None:
    """The given labels, checked against the network's config, or the config's own."""
    fields = {k: getattr(cfg, k, None) for k in ("class_embed_type", "num_class_embeds")}
    if classes is None:
        return classes_from_config(fields)
    if not isinstance(classes, ClassLabels):
        raise SDEditError(f"classes must be a ClassLabels, got {type(classes).__name__}")
    if hasattr(cfg, "num_class_embeds") and fields["class_embed_type"] is None and fields["num_class_embeds"] is None:
        raise SDEditError("classes given, but the network is not class-conditional (no num_class_embeds)")
    table = fields["num_class_embeds"] if fields["class_embed_type"] is None else None
    if table is not None and classes.num_classes != table:
        raise SDEditError(f"classes has {classes.num_classes} labels, the network's num_class_embeds is {table}")
    return classes
