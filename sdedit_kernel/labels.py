"""Class labels of a class-conditional score model: how many, their names, the null label.

A class-conditional diffusers `UNet2DModel` takes `class_labels`, indices into an embedding table of
`num_class_embeds` rows (or, with `class_embed_type="timestep"`, numbers passed through the time
projection). The null label, when the model has one, is the index it learned for "no class" by
label dropout during training (usually the extra last index): it is the unconditional model that
classifier-free guidance needs. `labels.json` next to `config.json` names both:
`{"names": ["T-shirt/top", ...], "null_label": 10}`, each field optional.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch

from .errors import SDEditError
from .guidance import Condition

Label = int | str | None  # an index, a class name, or None for "unlabelled" (the null label)
LABEL_FIELDS = ("names", "null_label")
CLASS_EMBED_TYPES = (None, "timestep")


@dataclass(frozen=True)
class ClassLabels:
    """The labels a class-conditional network accepts: indices 0 .. num_classes - 1.

    num_classes: the size of the network's label table (diffusers' num_class_embeds), the null label
    included. names: the names of indices 0 .. len(names) - 1 (None: labels are plain indices).
    null_label: the index of "no class" (None: the model has no unconditional evaluation, so neither
    guidance nor unlabelled items can run).
    """

    num_classes: int
    names: tuple[str, ...] | None = None
    null_label: int | None = None

    def __post_init__(self) -> None:
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise SDEditError(f"num_classes must be an integer >= 1, got {n!r}")
        if self.names is not None:
            names = self.names
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(
                    isinstance(v, str) and v for v in names):
                raise SDEditError(f"field names must be a list of non-empty strings, got {names!r}")
            if len(set(names)) != len(names):
                dup = sorted({v for v in names if names.count(v) > 1})
                raise SDEditError(f"field names repeats {dup}: each class needs its own name")
            if len(names) > n:
                raise SDEditError(f"field names lists {len(names)} classes, the network has {n} labels "
                                  "(num_class_embeds)")
            object.__setattr__(self, "names", tuple(names))
        null = self.null_label
        if null is not None:
            if isinstance(null, bool) or not isinstance(null, Integral):
                raise SDEditError(f"field null_label must be an integer index, got {null!r}")
            if not 0 <= null < n:
                raise SDEditError(f"field null_label {null} is out of range: the network has labels 0 .. {n - 1} "
                                  "(num_class_embeds)")
            if self.names is not None and null < len(self.names):
                raise SDEditError(f"field null_label {null} is the index of the named class "
                                  f"{self.names[null]!r}: the null label must be none of the named classes")
            object.__setattr__(self, "null_label", int(null))
        object.__setattr__(self, "num_classes", int(n))

    def resolve(self, label: int | str) -> int:
        """The index of a label given as an index or a class name; a clear error for anything else."""
        if isinstance(label, str):
            if self.names is None or label not in self.names:
                known = f"one of {list(self.names)}" if self.names else "an index: this model has no class names"
                raise SDEditError(f"unknown label {label!r}; give {known}")
            return self.names.index(label)
        if isinstance(label, bool) or not isinstance(label, Integral):
            raise SDEditError(f"a label must be an integer index or a class name, got {label!r}")
        if not 0 <= label < self.num_classes:
            raise SDEditError(f"label {label} is out of range: this model has labels 0 .. {self.num_classes - 1}")
        return int(label)

    def condition(self, labels: torch.Tensor | Sequence[Label] | None, scales: torch.Tensor,
                  device: torch.device) -> Condition:
        """The batch's labels and guidance weights bound as the network's `class_labels` input.

        Unlabelled items (labels None, or None entries) take the null label; guidance has no effect on
        them (their conditional and unconditional halves are the same model), so their weight is 1.
        """
        batch = scales.shape[0]
        index, labelled = self._indices(labels, batch)
        w = torch.where(labelled, scales, torch.ones_like(scales))
        inputs = {"class_labels": index.to(device)}
        if bool((w == 1).all()):
            return Condition(inputs)
        if self.null_label is None:
            raise SDEditError("guidance_scale != 1 needs the unconditional model, and this model has no null "
                              "label (labels.json: null_label)")
        null = {"class_labels": torch.full((batch,), self.null_label, dtype=torch.long, device=device)}
        return Condition(inputs, null, w)

    def _indices(self, labels: torch.Tensor | Sequence[Label] | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(label index [B], labelled [B]) with unlabelled items on the null label."""
        if labels is None:
            labels = [None] * batch
        if isinstance(labels, torch.Tensor):
            integer = not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool
            if labels.dim() != 1 or labels.shape[0] != batch or not integer:
                raise SDEditError(f"labels must be an integer tensor [B] = [{batch}], got {labels.dtype} "
                                  f"{tuple(labels.shape)}")
            labels = labels.tolist()
        elif hasattr(labels, "tolist") and not isinstance(labels, Sequence):  # numpy arrays
            labels = labels.tolist()
        if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) != batch:
            got = len(labels) if isinstance(labels, Sequence) and not isinstance(labels, str) else repr(labels)
            raise SDEditError(f"labels must give one label per item ({batch}), got {got}")
        if any(v is None for v in labels) and self.null_label is None:
            raise SDEditError("an unlabelled item needs the unconditional model, and this model has no null label "
                              "(labels.json: null_label): give every item a label")
        index = [self.null_label if v is None else self.resolve(v) for v in labels]
        labelled = [v is not None for v in labels]
        return torch.tensor(index, dtype=torch.long), torch.tensor(labelled, dtype=torch.bool)


def guidance_scales(guidance_scale: float | torch.Tensor | Sequence[float], batch: int) -> torch.Tensor:
    """Each item's guidance weight w as a float32 tensor [B]; finite and >= 0 (w = 0: unconditional)."""
    if isinstance(guidance_scale, bool):
        raise SDEditError(f"guidance_scale must be a number or one number per item, got {guidance_scale!r}")
    if isinstance(guidance_scale, Real):
        w = torch.full((batch,), float(guidance_scale), dtype=torch.float32)
    else:
        try:
            w = torch.as_tensor(guidance_scale).to(device="cpu", dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise SDEditError(f"guidance_scale must be a number or one number per item, got {guidance_scale!r}") from e
        if w.dim() != 1 or w.shape[0] != batch:
            raise SDEditError(f"guidance_scale must be a number or a tensor [B] = [{batch}], got {tuple(w.shape)}")
    if not bool((torch.isfinite(w) & (w >= 0)).all()):
        raise SDEditError(f"guidance_scale must be finite and >= 0 (1 = the conditional model, 0 = the "
                          f"unconditional one), got {w.tolist() if w.numel() <= 8 else 'a value outside'}")
    return w


def check_class_embedding(config: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """(class_embed_type, num_class_embeds) of a UNet2DModel config, if we can feed its labels.

    diffusers builds no class embedding for a type it does not know and then ignores the labels: such
    a checkpoint is refused here rather than run unconditioned.
    """
    kind, n = config.get("class_embed_type"), config.get("num_class_embeds")
    if kind not in CLASS_EMBED_TYPES:
        raise SDEditError(f"field class_embed_type {kind!r} is not supported: only null (an embedding table of "
                          "num_class_embeds labels) or 'timestep' (labels as numbers through the time projection)")
    if n is not None and (isinstance(n, bool) or not isinstance(n, Integral) or n < 1):
        raise SDEditError(f"field num_class_embeds must be an integer >= 1, got {n!r}")
    return kind, n


def classes_from_config(config: Mapping[str, Any] | None, names: Sequence[str] | None = None,
                        null_label: int | None = None) -> ClassLabels | None:
    """The network's labels from its config (and labels.json's fields); None for an unconditional network."""
    kind, n = check_class_embedding(config or {})
    if kind is None and n is None:
        if names is not None or null_label is not None:
            raise SDEditError("labels are given, but the network is not class-conditional (no num_class_embeds)")
        return None
    if n is None:  # "timestep" labels are numbers: the labels file says how many there are
        top = null_label + 1 if isinstance(null_label, Integral) and not isinstance(null_label, bool) else 0
        n = max(len(names) if isinstance(names, Sequence) else 0, top)
        if n == 0:
            raise SDEditError("class_embed_type 'timestep' without num_class_embeds: say how many labels there "
                              "are (num_class_embeds, or names in labels.json)")
    return ClassLabels(n, names, null_label)


def parse_labels_file(data: Mapping[str, Any]) -> tuple[list[str] | None, int | None]:
    """(names, null_label) from a labels.json object; unknown fields are refused, not ignored."""
    unknown = sorted(set(data) - set(LABEL_FIELDS))
    if unknown:
        raise SDEditError(f"unknown field(s) {unknown}; labels.json takes {list(LABEL_FIELDS)}")
    names = data.get("names")
    if names is not None and not isinstance(names, list):
        raise SDEditError(f"field names must be a list of strings, got {type(names).__name__}")
    return names, data.get("null_label")  # ClassLabels checks the values
