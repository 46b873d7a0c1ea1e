"""The editing core: work rows in, edited images and per-output fields out. No Ray here.

:class:`Editor` loads the score model once and runs SDEdit on rows as decode made them (guide
pixels, edit mask bits, t0, generator seed). Rows are grouped so that each kernel call is uniform
(one t0, all masked or none), and every output gets its own ``torch.Generator`` seeded from its
``generator_seed``: an output never depends on its batch, actor or machine. A failing kernel call is
retried row by row, so one bad item becomes one error row. The Ray actor (pipeline.actor), ``sdedit
tune-t0`` and benchmarks/pipeline_vs_bare.py all edit through this one class.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pipeline.builtin import model_name, resolve_model_uri
from pipeline.errors import ItemError
from pipeline.images import WorkingSize
from pipeline.rows import carried_from
from pipeline.spec import ModelSpec, SamplingSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PASSED_ON = carried_from("work", "result")  # the work row's columns that the result row keeps


@dataclass(frozen=True)
class EditSettings:
    """What an editor is built from: the job's model and sampling sections, plus where it runs."""

    model: ModelSpec
    sampling: SamplingSpec
    working: WorkingSize
    device: str = "cpu"
    threads: int = 1
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # model's; may hold credentials


def model_label(uri: str, digest: str | None) -> str:
    """The index's ``model`` value: name and weights digest, e.g. ``fashion-mnist-ddpm@sha256:ab12...``."""
    return f"{model_name(uri)}@sha256:{digest}" if digest else model_name(uri)


class Editor:
    """One loaded model on one device; :meth:`edit_rows` edits work rows."""

    def __init__(self, settings: EditSettings) -> None:
        from sdedit_kernel import ExecutionOptions, accelerate, load_score_model

        torch.set_num_threads(settings.threads)
        self.settings = settings
        spec = settings.model
        self.model = load_score_model(
            resolve_model_uri(spec.uri), device=settings.device, dtype=DTYPES[spec.dtype],
            storage_options=dict(settings.storage_options) or None,
        )
        self.label = model_label(spec.uri, self.model.digest)
        accelerate(self.model, ExecutionOptions(
            autocast=None if spec.autocast == "none" else spec.autocast, channels_last=spec.channels_last,
            compile=None if spec.compile == "off" else spec.compile, cudnn_benchmark=spec.cudnn_benchmark,
        ))

    def blank_results(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Result rows before editing: the work rows' passed-on columns and the model label."""
        return [{**{k: row[k] for k in _PASSED_ON}, "model": self.label} for row in rows]

    def edit_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Work rows -> result rows (rows that arrive as errors stay errors, unedited)."""
        results = self.blank_results(rows)
        self.edit(rows, results, [i for i, row in enumerate(rows) if row["status"] == "ok"])
        return results

    def edit(self, rows: Sequence[Mapping[str, Any]], results: list[dict[str, Any]], indices: Sequence[int]) -> None:
        """Edit ``rows[i]`` for each i in ``indices`` into ``results[i]``, one kernel call per uniform group."""
        groups: dict[tuple[float, bool], list[int]] = {}
        for i in indices:
            groups.setdefault((rows[i]["t0"], rows[i]["edit_mask"] is not None), []).append(i)
        for (t0, _), members in groups.items():
            self._edit_group(rows, results, members, t0)

    def _edit_group(self, rows: Sequence[Mapping[str, Any]], results: list[dict[str, Any]],
                    indices: list[int], t0: float) -> None:
        from sdedit_kernel import SDEditError

        try:
            self._run_kernel(rows, results, indices, t0)
        except Exception as e:  # noqa: BLE001 - isolate the culprit, then report it as an error row
            if len(indices) > 1:
                for i in indices:
                    self._edit_group(rows, results, [i], t0)
                return
            # The kernel refuses arguments with SDEditError; anything else is the network or the device.
            kind = "bad parameters" if isinstance(e, SDEditError) else "model error"
            failure = ItemError(kind, f"{type(e).__name__}: {e}")
            results[indices[0]].update(status="error", error=failure.message, error_kind=failure.kind)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host -> device; on CUDA from pinned memory, asynchronously (the copy overlaps queued work)."""
        if self.model.device.type != "cuda":
            return tensor.to(self.model.device)
        return tensor.pin_memory().to(self.model.device, non_blocking=True)

    @torch.inference_mode()
    def _run_kernel(self, rows: Sequence[Mapping[str, Any]], results: list[dict[str, Any]],
                    indices: list[int], t0: float) -> None:
        from sdedit_kernel import model_calls, resolve_steps, sdedit

        s, w = self.settings.sampling, self.settings.working
        shape = (w.height, w.width, w.channels)
        guide_u8 = np.stack([np.frombuffer(rows[i]["pixels"], np.uint8).reshape(shape) for i in indices])
        guide = torch.from_numpy(guide_u8).permute(0, 3, 1, 2).float().div(255.0)
        edit_mask = None
        if rows[indices[0]]["edit_mask"] is not None:
            bits = np.stack([np.frombuffer(rows[i]["edit_mask"], np.uint8) for i in indices])
            edit_mask = self._to_device(torch.from_numpy(bits.reshape(len(indices), 1, w.height, w.width)).float())
        # On a GPU the noise is drawn there (Philox): CPU draws plus copies would cost up to a third of a
        # fast step. Same seeds, another stream: GPU and CPU outputs of one item differ, each reproducibly.
        rng_device = self.model.device if self.model.device.type == "cuda" else torch.device("cpu")
        generators = [torch.Generator(device=rng_device).manual_seed(rows[i]["generator_seed"]) for i in indices]
        steps = resolve_steps(self.model, t0, s.steps, s.sampler)
        condition: dict[str, Any] = {}
        if self.model.conditioning == "class":  # each item its own label (None: unlabelled) and guidance scale
            condition = {"labels": [rows[i]["label"] for i in indices],
                         "guidance_scale": [rows[i]["guidance_scale"] for i in indices]}
        elif self.model.conditioning == "text":  # each item its own prompt, negative prompt and guidance scale
            condition = {"prompts": [rows[i]["prompt"] for i in indices],
                         "negative_prompts": [rows[i]["negative_prompt"] for i in indices],
                         "guidance_scale": [rows[i]["guidance_scale"] for i in indices]}
        start = time.perf_counter()
        edited = sdedit(
            self.model, self._to_device(guide), t0=t0, steps=s.steps, sampler=s.sampler,
            edit_mask=edit_mask, passes=s.passes, generator=generators, **condition, **dict(s.options),
        )
        per_item_ms = (time.perf_counter() - start) * 1000.0 / len(indices)
        out_u8 = edited.float().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        diff = out_u8.astype(np.float64) / 255.0 - guide_u8.astype(np.float64) / 255.0
        l2 = np.sqrt((diff**2).reshape(len(indices), -1).mean(axis=1))
        calls = model_calls(s.sampler, steps, s.passes, **dict(s.options))
        notes = self._prompt_notes(rows, indices) if self.model.conditioning == "text" else {}
        for k, i in enumerate(indices):
            results[i].update(
                output=np.ascontiguousarray(out_u8[k]).tobytes(), steps=steps, model_calls=calls,
                faithfulness_l2=float(l2[k]), duration_ms=per_item_ms,
            )
            if notes.get(i):
                results[i]["notes"] = "; ".join(filter(None, [results[i]["notes"], notes[i]]))

    def _prompt_notes(self, rows: Sequence[Mapping[str, Any]], indices: list[int]) -> dict[int, str]:
        """A note for each output whose prompt or negative prompt the text encoder truncated, or whose
        prompt was empty (stated: the model then ran on the empty prompt)."""
        from sdedit_kernel import prompt_notes

        found: dict[int, str] = {}
        for column, prefix in (("prompt", ""), ("negative_prompt", "negative prompt: ")):
            cut = prompt_notes(self.model, [rows[i][column] for i in indices])
            for i, note in zip(indices, cut, strict=True):
                if note:
                    found[i] = "; ".join(filter(None, [found.get(i), prefix + note]))
        for i in indices:
            if rows[i]["prompt"] is None:
                found[i] = "; ".join(filter(None, [found.get(i), "no prompt: the empty prompt was used"]))
        return found


def probe_batch_size(settings: EditSettings, limit: int = 1024) -> int:
    """Load the model as an actor would and measure its batch size (compile left out); a Ray task body."""
    from sdedit_kernel import choose_batch_size

    editor = Editor(replace(settings, model=settings.model.model_copy(update={"compile": "off"})))
    editor.model.sample_size = (settings.working.height, settings.working.width)  # the job's working size
    cap = limit if editor.model.device.type == "cuda" else min(limit, 256)
    guided = editor.model.can_guide and settings.sampling.guidance_scale != 1
    return choose_batch_size(editor.model, limit=cap, guided=guided)
