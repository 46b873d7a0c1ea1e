"""The model stage: a Ray Data actor that loads the score model once and runs SDEdit on batches.

One actor = one loaded model on one device. A batch may mix per-item t0 values and masked and
unmasked items; rows are grouped so that each kernel call is uniform, and every output gets its own
``torch.Generator`` seeded from (seed, id, sample): an output never depends on its batch or actor.
A failing kernel call is retried row by row, so one bad item becomes one error row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.builtin import model_name, resolve_model_uri
from pipeline.index import INPUT_COLUMNS

RESULT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("sample", pa.int32()),
    ("guide", pa.string()),
    ("mask", pa.string()),
    ("t0", pa.float64()),
    ("base_seed", pa.int64()),
    ("seed", pa.int64()),
    ("output", pa.binary()),  # uint8 [H, W, C]
    ("steps", pa.int32()),
    ("model_calls", pa.int64()),
    ("faithfulness_l2", pa.float64()),
    ("duration_ms", pa.float64()),
    ("model", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("notes", pa.string()),
    *[(name, pa.string()) for name in INPUT_COLUMNS],  # passed through to the index (index.py)
])
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSettings:
    """What an actor needs to build its model and call the kernel (picklable)."""

    uri: str
    device: str
    dtype: str
    threads: int
    sampler: str
    steps: int | None
    passes: int
    channels: int
    height: int
    width: int
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials


def model_label(uri: str, digest: str | None) -> str:
    """The index's ``model`` value: name and weights digest, e.g. ``fashion-mnist-ddpm@sha256:ab12...``."""
    return f"{model_name(uri)}@sha256:{digest}" if digest else model_name(uri)


class SDEditor:
    """Callable class for ``map_batches``: ``__init__`` loads the model, ``__call__`` edits a batch."""

    def __init__(self, settings: ModelSettings) -> None:
        from sdedit_kernel import load_score_model

        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.model = load_score_model(
            resolve_model_uri(settings.uri), device=settings.device, dtype=DTYPES[settings.dtype],
            storage_options=dict(settings.storage_options) or None,
        )
        self.label = model_label(settings.uri, self.model.digest)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results: list[dict[str, Any]] = [self._base(row) for row in rows]
        groups: dict[tuple[float, bool], list[int]] = {}
        for i, row in enumerate(rows):
            if row["status"] == "ok":
                groups.setdefault((row["t0"], row["edit_mask"] is not None), []).append(i)
        for (t0, _), indices in groups.items():
            self._run_group(rows, results, indices, t0)
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _base(self, row: Mapping[str, Any]) -> dict[str, Any]:
        keep = ("id", "sample", "guide", "mask", "t0", "base_seed", "seed", "status", "error", "notes",
                *INPUT_COLUMNS)
        return {**{k: row[k] for k in keep}, "model": self.label}

    def _run_group(self, rows: list[dict[str, Any]], results: list[dict[str, Any]],
                   indices: list[int], t0: float) -> None:
        try:
            self._edit(rows, results, indices, t0)
        except Exception as e:  # noqa: BLE001 - isolate the culprit, then report it as an error row
            if len(indices) > 1:
                for i in indices:
                    self._run_group(rows, results, [i], t0)
                return
            kind = "bad parameters" if isinstance(e, ValueError) else "model error"
            results[indices[0]].update(status="error", error=f"{kind}: {type(e).__name__}: {e}")

    @torch.inference_mode()
    def _edit(self, rows: list[dict[str, Any]], results: list[dict[str, Any]],
              indices: list[int], t0: float) -> None:
        from sdedit_kernel import model_calls, resolve_steps, sdedit

        s = self.settings
        shape = (s.height, s.width, s.channels)
        guide_u8 = np.stack([np.frombuffer(rows[i]["pixels"], np.uint8).reshape(shape) for i in indices])
        guide = torch.from_numpy(guide_u8).permute(0, 3, 1, 2).float().div(255.0)
        edit_mask = None
        if rows[indices[0]]["edit_mask"] is not None:
            bits = np.stack([np.frombuffer(rows[i]["edit_mask"], np.uint8) for i in indices])
            edit_mask = torch.from_numpy(bits.reshape(len(indices), 1, s.height, s.width)).float()
            edit_mask = edit_mask.to(self.model.device)
        generators = [torch.Generator().manual_seed(rows[i]["seed"]) for i in indices]
        steps = resolve_steps(self.model, t0, s.steps, s.sampler)
        start = time.perf_counter()
        edited = sdedit(
            self.model, guide.to(self.model.device), t0=t0, steps=s.steps, sampler=s.sampler,
            edit_mask=edit_mask, passes=s.passes, generator=generators, **dict(s.sampler_options),
        )
        per_item_ms = (time.perf_counter() - start) * 1000.0 / len(indices)
        out_u8 = edited.float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
        out_u8 = out_u8.permute(0, 2, 3, 1).cpu().numpy()
        diff = out_u8.astype(np.float64) / 255.0 - guide_u8.astype(np.float64) / 255.0
        l2 = np.sqrt((diff**2).reshape(len(indices), -1).mean(axis=1))
        calls = model_calls(s.sampler, steps, s.passes, **dict(s.sampler_options))
        for k, i in enumerate(indices):
            results[i].update(
                output=np.ascontiguousarray(out_u8[k]).tobytes(), steps=steps, model_calls=calls,
                faithfulness_l2=float(l2[k]), duration_ms=per_item_ms,
            )
