"""The model stage: the callable that a model actor (pipeline.pool) holds around
:class:`pipeline.editing.Editor`, plus the crash ledger.

One actor = one loaded model on one device. The editing itself (grouping, tensors, seeds, the
kernel call, the L2 figure, error rows) is the Ray-free :class:`~pipeline.editing.Editor`; what is
Ray's business stays here: Arrow batches in and out, and the crash-ledger protocol that turns an
item which kills its process every time into an error row (pipeline.ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.editing import Editor, EditSettings
from pipeline.errors import ItemError
from pipeline.ledger import LedgerClient, work_key
from pipeline.rows import RESULT_SCHEMA

# Batches a restarted model process takes one item at a time before trusting the ledger's count: the
# pool keeps up to 2 batches in flight per actor (pipeline.pool.IN_FLIGHT), all retried after a death,
# in an order that is not promised; the count alone would miss a death whose lost fire-and-forget
# ``begin`` would have told it.
SUSPECT_BATCHES = 4


@dataclass(frozen=True)
class ActorSettings:
    """What a model actor is built from (picklable): the editor's settings and the crash policy."""

    edit: EditSettings
    max_crashes_per_item: int = 2
    ledger: Any = None  # a pipeline.ledger.CrashLedger actor handle, or None


class SDEditor:
    """Callable class: ``__init__`` loads the model, ``__call__`` edits an Arrow batch (pipeline.pool's
    actors hold one each)."""

    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings
        self.editor = Editor(settings.edit)
        self.ledger = LedgerClient(settings.ledger)
        # A process Ray restarted after a death: careful with every batch (pipeline.ledger), and the
        # first ones it is handed, the retries of the batches in flight when its predecessor died (the
        # one it died on among them), go item by item.
        self.careful = _restarted()
        self.suspects = SUSPECT_BATCHES if self.careful else 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = self.editor.blank_results(rows)
        todo = [i for i, row in enumerate(rows) if row["status"] == "ok"]
        batch_key = work_key(_key(rows[i]) for i in todo) if todo else None
        isolate = False
        if batch_key is not None and self.careful:
            isolate = self.ledger.begin(batch_key) > 0 or self.suspects > 0
            self.suspects -= 1
        elif batch_key is not None:
            self.ledger.begin_later(batch_key)
        if isolate:  # a process died on this batch before: one item at a time, so only the culprit is lost
            for i in todo:
                self._edit_isolated(rows, results, i)
        else:
            self.editor.edit(rows, results, todo)
        ok = sum(r["status"] == "ok" for r in results)
        self.ledger.done(batch_key, ok, len(results) - ok)
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _edit_isolated(self, rows: list[dict[str, Any]], results: list[dict[str, Any]], i: int) -> None:
        key = work_key([_key(rows[i])])
        deaths = self.ledger.begin(key)
        n = self.settings.max_crashes_per_item
        if deaths >= n:
            # Left open in the ledger on purpose: if its batch dies again, the item is skipped again.
            # Later skips count as attempts too; the deaths were n exactly.
            failure = ItemError("worker crash", f"the model process died {n} time{'s' * (n != 1)} while "
                                "editing this item (resources.max_crashes_per_item); it was skipped")
            results[i].update(status="error", error=failure.message, error_kind=failure.kind)
            return
        self.editor.edit(rows, results, [i])
        self.ledger.finish(key)


def _restarted() -> bool:
    """Whether this process is a Ray actor that Ray restarted after its process died."""
    import warnings

    import ray

    if not ray.is_initialized():
        return False
    try:
        context = ray.get_runtime_context()
        if context.get_actor_id() is None:
            return False
        with warnings.catch_warnings():  # Ray's property itself calls an API Ray deprecated
            warnings.simplefilter("ignore")
            return bool(context.was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - cannot tell: not restarted (the ledger's count still applies)
        return False


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["id"], row["t0"], row["sample"]
