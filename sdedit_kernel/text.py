"""Text conditioning: prompts -> the UNet's `encoder_hidden_states`, bound as a Condition (CLIP, SD 1.x/2.x).

Encoding follows diffusers' StableDiffusionPipeline.encode_prompt: pad to the tokenizer's
model_max_length, truncate longer prompts, take the text model's last hidden state (attention mask
only where the text config asks for one). With guidance (some w != 1) the unconditional half of the
2B network call gets each item's negative prompt, or the empty prompt "" when it has none: the
same embedding diffusers uses for `negative_prompt=None`. Every distinct string of a call (prompts
and negative prompts together) goes through the text model once, in one batch, so a batch of many
items sharing a prompt costs one encoding.

Truncation is silent in the network (as in diffusers, which only logs it); `truncation_note` says
what was cut so that a job can record it next to the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .errors import SDEditError
from .guidance import Condition

if TYPE_CHECKING:
    from .model import ScoreModel

Prompts = str | Sequence[str | None] | None  # one string for every item, one per item (None: ""), or None


class TextEncoder:
    """A CLIP tokenizer and text model; `max_length` is the token limit (BOS and EOS included)."""

    def __init__(self, tokenizer: Any, model: Any, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.model = model
        limit = max_length if max_length is not None else int(tokenizer.model_max_length)
        self.max_length = min(limit, int(getattr(model.config, "max_position_embeddings", limit)))
        self.use_attention_mask = bool(getattr(model.config, "use_attention_mask", False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """[len(prompts), max_length, hidden] in one text-model call."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device) if self.use_attention_mask else None
        return self.model(ids, attention_mask=mask)[0]

    def token_ids(self, prompt: str) -> list[int]:
        """The prompt's token ids, BOS and EOS included, before any truncation."""
        # verbose=False: no warning about sequences over the limit; measuring them is the point here
        return list(self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])

    def truncation_note(self, prompt: str | None) -> str | None:
        """None when the prompt fits; else a note that says how many tokens were kept and what was cut."""
        if prompt is None:
            return None
        ids = self.token_ids(prompt)
        if len(ids) <= self.max_length:
            return None
        dropped = self.tokenizer.decode(ids[self.max_length - 1 : -1])
        return (f"prompt truncated to the text encoder's {self.max_length} tokens "
                f"({len(ids) - self.max_length} cut): {dropped!r} was ignored")

    def condition(self, prompts: Prompts, negative_prompts: Prompts, scales: torch.Tensor,
                  dtype: torch.dtype) -> Condition:
        """The batch's prompts (and, where guided, negative prompts) as `encoder_hidden_states`."""
        batch = scales.shape[0]
        cond = per_item(prompts, batch, "prompts")
        negs = per_item(negative_prompts, batch, "negative_prompts")
        guided = bool((scales != 1).any())
        distinct = list(dict.fromkeys(cond + negs if guided else cond))
        table = self.encode(distinct).to(dtype)
        row = {p: i for i, p in enumerate(distinct)}

        def states(texts: list[str]) -> torch.Tensor:
            return table[torch.tensor([row[p] for p in texts], device=table.device)]

        inputs = {"encoder_hidden_states": states(cond)}
        if not guided:
            return Condition(inputs)
        return Condition(inputs, {"encoder_hidden_states": states(negs)}, scales)


def prompt_notes(model: ScoreModel, prompts: Sequence[str | None]) -> list[str | None]:
    """One note per prompt: None when it fits the text encoder (or is None), else what truncation cut.

    The pipeline calls this once per batch (or per distinct prompt) and records the note with the
    output; negative prompts can be checked the same way.
    """
    text = getattr(model, "text", None)
    if text is None:
        raise SDEditError("prompt_notes needs a text-conditional model")
    notes = {p: text.truncation_note(p) for p in dict.fromkeys(prompts)}  # each distinct prompt tokenized once
    return [notes[p] for p in prompts]


def per_item(prompts: Prompts, batch: int, name: str) -> list[str]:
    """One string per item: None and None entries are the empty prompt; one string serves every item."""
    if prompts is None:
        return [""] * batch
    if isinstance(prompts, str):
        return [prompts] * batch
    if not isinstance(prompts, Sequence) or len(prompts) != batch:
        got = len(prompts) if isinstance(prompts, Sequence) else type(prompts).__name__
        raise SDEditError(f"{name} must be a string, or one string (or None) per item ({batch}), got {got}")
    bad = [p for p in prompts if p is not None and not isinstance(p, str)]
    if bad:
        raise SDEditError(f"{name} must be strings (or None for the empty prompt), got {bad[0]!r}")
    return ["" if p is None else p for p in prompts]

