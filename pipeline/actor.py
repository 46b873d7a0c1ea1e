"""The model stage: a Ray Data actor that loads the score model once and runs SDEdit on batches.

One actor = one loaded model on one device. A batch may mix per-item t0 values and masked and
unmasked items; rows are grouped so that each kernel call is uniform, and every output gets its own
``torch.Generator`` seeded from (seed, id, sample): an output never depends on its batch or actor.
A failing kernel call is retried row by row, so one bad item becomes one error row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.builtin import model_name, resolve_model_uri
from pipeline.index import INPUT_COLUMNS
from pipeline.ledger import LedgerClient, work_key

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
    autocast: str = "none"
    channels_last: bool = False
    compile: str = "off"
    cudnn_benchmark: bool = False
    max_crashes: int = 2
    ledger: Any = field(default=None, repr=False)  # a pipeline.ledger.CrashLedger actor handle, or None


def probe_batch_size(settings: ModelSettings, limit: int = 1024) -> int:
    """A Ray task body: load the model as an actor would and measure its batch size (compile left out)."""
    from sdedit_kernel import choose_batch_size

    editor = SDEditor(replace(settings, compile="off"))
    editor.model.sample_size = (settings.height, settings.width)  # the job's working size
    cap = limit if editor.model.device.type == "cuda" else min(limit, 256)
    return choose_batch_size(editor.model, limit=cap)


def _output_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return row["id"], row["t0"], row["sample"]


def model_label(uri: str, digest: str | None) -> str:
    """The index's ``model`` value: name and weights digest, e.g. ``fashion-mnist-ddpm@sha256:ab12...``."""
    return f"{model_name(uri)}@sha256:{digest}" if digest else model_name(uri)


class SDEditor:
    """Callable class for ``map_batches``: ``__init__`` loads the model, ``__call__`` edits a batch."""

    def __init__(self, settings: ModelSettings) -> None:
        from sdedit_kernel import ExecutionOptions, accelerate, load_score_model

        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.model = load_score_model(
            resolve_model_uri(settings.uri), device=settings.device, dtype=DTYPES[settings.dtype],
            storage_options=dict(settings.storage_options) or None,
        )
        self.label = model_label(settings.uri, self.model.digest)
        accelerate(self.model, ExecutionOptions(
            autocast=None if settings.autocast == "none" else settings.autocast,
            channels_last=settings.channels_last, compile=None if settings.compile == "off" else settings.compile,
            cudnn_benchmark=settings.cudnn_benchmark,
        ))
        self.ledger = LedgerClient(settings.ledger)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results: list[dict[str, Any]] = [self._base(row) for row in rows]
        todo = [i for i, row in enumerate(rows) if row["status"] == "ok"]
        batch_key = work_key(_output_key(rows[i]) for i in todo)
        if todo and self.ledger.begin(batch_key) > 0:
            # A process died on this batch before: go one item at a time, so only the culprit is lost.
            for i in todo:
                self._run_isolated(rows, results, i)
        else:
            groups: dict[tuple[float, bool], list[int]] = {}
            for i in todo:
                groups.setdefault((rows[i]["t0"], rows[i]["edit_mask"] is not None), []).append(i)
            for (t0, _), indices in groups.items():
                self._run_group(rows, results, indices, t0)
        if todo:
            self.ledger.finish(batch_key)
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _run_isolated(self, rows: list[dict[str, Any]], results: list[dict[str, Any]], i: int) -> None:
        key = work_key([_output_key(rows[i])])
        deaths = self.ledger.begin(key)
        if deaths >= self.settings.max_crashes:
            # Left open in the ledger on purpose: if its batch dies again, the item is skipped again.
            n = self.settings.max_crashes  # later skips count as attempts too; the deaths were n exactly
            times = f"{n} time{'s' * (n != 1)}"
            results[i].update(status="error", error=f"worker crash: the model process died {times} while "
                              "editing this item (resources.max_crashes_per_item); it was skipped")
            return
        self._run_group(rows, results, [i], rows[i]["t0"])
        self.ledger.finish(key)

    def _base(self, row: Mapping[str, Any]) -> dict[str, Any]:
        keep = ("id", "sample", "guide", "mask", "t0", "base_seed", "seed", "status", "error", "notes",
                *INPUT_COLUMNS)
        return {**{k: row[k] for k in keep}, "model": self.label}

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host -> device; on CUDA from pinned memory, asynchronously (the copy overlaps queued work)."""
        if self.model.device.type != "cuda":
            return tensor.to(self.model.device)
        return tensor.pin_memory().to(self.model.device, non_blocking=True)

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
            edit_mask = self._to_device(edit_mask)
        # On a GPU the noise is drawn there (Philox): CPU draws plus copies would cost up to a third of a
        # fast step. Same seeds, another stream: GPU and CPU outputs of one item differ, each reproducibly.
        rng_device = self.model.device if self.model.device.type == "cuda" else torch.device("cpu")
        generators = [torch.Generator(device=rng_device).manual_seed(rows[i]["seed"]) for i in indices]
        steps = resolve_steps(self.model, t0, s.steps, s.sampler)
        start = time.perf_counter()
        edited = sdedit(
            self.model, self._to_device(guide), t0=t0, steps=s.steps, sampler=s.sampler,
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
