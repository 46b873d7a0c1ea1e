"""Run summary: counts read back from the written index, so the summary says what is on disk.

The summary is what a user reads at the end of a run and what decides the exit code; computing it
from the index (not from counters kept while running) means it cannot disagree with the outputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.errors import kind_of
from pipeline.index import read_index
from pipeline.naming import OutputLayout


@dataclass(frozen=True)
class RunSummary:
    """What a run produced; ``exit_code`` is 0 when every output is ok, 3 when some failed."""

    out_uri: str
    items: int
    outputs: int
    outputs_ok: int
    items_failed: int
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    resumed_outputs: int = 0  # outputs an earlier run had already written (output.if_exists=resume)
    items_run: int = 0  # items with at least one output produced by this run
    items_with_notes: int = 0  # items whose inputs were converted (the index's notes column says how)

    @property
    def outputs_failed(self) -> int:
        return self.outputs - self.outputs_ok

    @property
    def items_per_s(self) -> float:
        """Items this run worked on, per second of this run."""
        return self.items_run / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def outputs_per_s(self) -> float:
        return (self.outputs - self.resumed_outputs) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.outputs_failed == 0 else 3

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outputs_failed": self.outputs_failed,
                "items_per_s": round(self.items_per_s, 4), "outputs_per_s": round(self.outputs_per_s, 4)}

    def render(self) -> str:
        lines = [
            f"sdedit: {self.outputs_ok} of {self.outputs} outputs written to {self.out_uri} "
            f"({self.items} items, {self.items_failed} failed)",
            f"        {self.wall_s:.1f} s wall, {self.items_per_s:.3f} items/s, "
            f"{self.outputs_per_s:.3f} outputs/s",
        ]
        if self.items_with_notes:
            lines.append(f"        notes: {self.items_with_notes} item(s) had their guide or mask converted "
                         "(mode, alpha, size, grey mask thresholded) or built (composite, stroke edit): "
                         "see the index's notes column")
        if self.resumed_outputs:
            lines.append(f"        resumed: {self.resumed_outputs} outputs were already done and kept")
        for reason, count in sorted(self.failures_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"        failed: {count} item(s): {reason}")
        return "\n".join(lines)


def summarize(out_uri: str, options: Mapping[str, Any] | None, wall_s: float, layout: OutputLayout,
              resumed: frozenset[tuple[str, float | None, int]] = frozenset()) -> RunSummary:
    """Count outputs and failed items (by reason) from the index under ``out_uri``.

    ``resumed``: the outputs an earlier run made, as ``layout.key`` keys.
    """
    columns = ["id", "sample", "t0", "status", "error", "error_kind", "notes"]
    table: pa.Table = read_index(out_uri, options, columns=columns)
    ids, samples, t0s = (table.column(c).to_pylist() for c in ("id", "sample", "t0"))
    return RunSummary(
        out_uri=out_uri, **index_counts(table), wall_s=wall_s, resumed_outputs=len(resumed),
        items_run=len({i for i, t0, s in zip(ids, t0s, samples, strict=True)
                       if layout.key(i, t0, s) not in resumed}),
    )


def index_counts(table: pa.Table) -> dict[str, Any]:
    """Outputs, ok outputs, items, failed items by reason (an item's first failure) and items with
    notes, of index rows (``id``, ``status``, ``error``, ``error_kind``, ``notes`` read)."""
    ids = table.column("id").to_pylist()
    statuses = table.column("status").to_pylist()
    failed: dict[str, str] = {}
    for item_id, status, error, kind in zip(ids, statuses, table.column("error").to_pylist(),
                                            table.column("error_kind").to_pylist(), strict=True):
        if status != "ok" and item_id not in failed:
            failed[item_id] = kind_of(error, kind)
    return {
        "outputs": len(ids), "outputs_ok": sum(s == "ok" for s in statuses), "items": len(set(ids)),
        "items_failed": len(failed), "failures_by_reason": dict(Counter(failed.values())),
        "items_with_notes": len({i for i, n in zip(ids, table.column("notes").to_pylist(), strict=True) if n}),
    }


def summarize_records(out_uri: str, records: Mapping[str, Mapping[str, Any]], wall_s: float,
                      run_id: str) -> RunSummary:
    """The run's summary from the shard records (``records``: :func:`pipeline.finalize.read_records`'
    result): O(shards), never the whole index.

    A record is written from its shard's index rows, so the counts are those of the index on disk.
    ``run_id``: this run; what records of other runs hold was made earlier (resumed).
    """
    shards = list(records.values())
    failures: Counter[str] = Counter()
    for r in shards:
        failures.update(r.get("failures_by_reason", {}))
    outputs = sum(r["outputs"] for r in shards)
    new = sum(r["outputs_new"] for r in shards if r.get("run_id") == run_id)
    return RunSummary(
        out_uri=out_uri, items=sum(r["items"] for r in shards), outputs=outputs,
        outputs_ok=sum(r["outputs_ok"] for r in shards), items_failed=sum(r["items_failed"] for r in shards),
        failures_by_reason=dict(failures), wall_s=wall_s, resumed_outputs=outputs - new,
        items_run=sum(r["items_new"] for r in shards if r.get("run_id") == run_id),
        items_with_notes=sum(r["items_with_notes"] for r in shards),
    )
