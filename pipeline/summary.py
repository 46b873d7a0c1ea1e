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

from pipeline.index import read_index
from pipeline.naming import output_key


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


def failure_reason(error: str) -> str:
    """The category of an error message: the text before its first colon ("missing guide", ...)."""
    return error.split(":", 1)[0].strip() or "error"


def summarize(out_uri: str, options: Mapping[str, Any] | None, wall_s: float,
              resumed: frozenset[tuple[str, float | None, int]] = frozenset()) -> RunSummary:
    """Count outputs and failed items (by reason) from the index under ``out_uri``.

    ``resumed``: the outputs an earlier run made, as :func:`pipeline.naming.output_key` keys.
    """
    table: pa.Table = read_index(out_uri, options, columns=["id", "sample", "t0", "status", "error", "notes"])
    ids = table.column("id").to_pylist()
    statuses = table.column("status").to_pylist()
    errors = table.column("error").to_pylist()
    samples = table.column("sample").to_pylist()
    t0s = table.column("t0").to_pylist()
    sweep = any(key[1] is not None for key in resumed)  # keys carry t0 only in sweeps; no keys: no matter
    failed_items: dict[str, str] = {}
    for item_id, status, error in zip(ids, statuses, errors, strict=True):
        if status != "ok" and item_id not in failed_items:
            failed_items[item_id] = failure_reason(error or "error")
    return RunSummary(
        out_uri=out_uri,
        items=len(set(ids)),
        outputs=len(ids),
        outputs_ok=sum(1 for s in statuses if s == "ok"),
        items_failed=len(failed_items),
        failures_by_reason=dict(Counter(failed_items.values())),
        wall_s=wall_s,
        resumed_outputs=len(resumed),
        items_run=len({i for i, t0, s in zip(ids, t0s, samples, strict=True)
                       if output_key(i, t0, s, sweep) not in resumed}),
        items_with_notes=len({i for i, n in zip(ids, table.column("notes").to_pylist(), strict=True) if n}),
    )
