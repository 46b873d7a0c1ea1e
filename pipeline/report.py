"""``sdedit inspect OUT``: what a job made, read back from its index and job.json, for people and scripts.

Counts, failures by reason, throughput, the model and sampler, and the t0 and faithfulness
distributions, from the output folder alone (local or any fsspec URI), so it works on a run made
elsewhere or long ago. Everything countable comes from the index, as the run's own summary does
(:func:`pipeline.summary.summarize`); only the wall time and throughput come from job.json.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import kind_of
from pipeline.index import read_index
from pipeline.naming import OutputLayout, canonical_t0, t0_label
from pipeline.outdir import SHEET_FILE, SWEEP_PLOT_FILE, SWEEP_SHEET_FILE, read_job_record
from pipeline.storage import join_uri, url_to_fs
from pipeline.summary import summarize
from pipeline.sweep import faithfulness_by_t0

_COLUMNS = ["id", "sample", "t0", "status", "error", "error_kind", "faithfulness_l2", "notes", "sampler", "steps",
            "duration_ms"]


def inspect_output(out_uri: str, options: Mapping[str, Any] | None = None, *,
                   input_options: Mapping[str, Any] | None = None, draw: bool = False) -> dict[str, Any]:
    """The report as plain data (what ``--json`` prints); draws the missing sheets when ``draw``."""
    job = read_job_record(out_uri, options)
    table = read_index(out_uri, options, columns=_COLUMNS)
    rows = table.to_pylist()
    recorded = job.get("summary") or {}
    counts = summarize(out_uri, options, float(recorded.get("wall_s") or 0.0), OutputLayout.of_job(job["spec"]))
    sampling = job.get("spec", {}).get("sampling", {})
    ok = [r for r in rows if r["status"] == "ok"]
    by_t0 = faithfulness_by_t0(table)
    failed_examples: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["status"] != "ok":
            failed_examples.setdefault(kind_of(r["error"], r["error_kind"]), {"id": r["id"], "error": r["error"]})
    report: dict[str, Any] = {
        "out": out_uri,
        "status": job.get("status"),
        "written_at": job.get("written_at"),
        "model": job.get("model", {}),
        "sampling": {
            "sampler": _distinct(r["sampler"] for r in rows) or [sampling.get("sampler")],
            "steps": _distinct(r["steps"] for r in ok),
            "passes": sampling.get("passes"), "t0": sampling.get("t0"),
            "samples": sampling.get("samples"), "seed": sampling.get("seed"),
        },
        "items": counts.items, "items_failed": counts.items_failed,
        "outputs": counts.outputs, "outputs_ok": counts.outputs_ok, "outputs_failed": counts.outputs_failed,
        "failures_by_reason": counts.failures_by_reason, "failure_examples": failed_examples,
        "wall_s": recorded.get("wall_s"), "items_per_s": recorded.get("items_per_s"),
        "outputs_per_s": recorded.get("outputs_per_s"), "resumed_outputs": recorded.get("resumed_outputs"),
        "model_ms_per_output": _mean([r["duration_ms"] for r in ok if r["duration_ms"] is not None]),
        "t0_counts": {t0_label(t): n for t, n in sorted(Counter(
            canonical_t0(r["t0"]) for r in rows if r["t0"] is not None).items())},
        "faithfulness_l2": _stats([r["faithfulness_l2"] for r in ok if r["faithfulness_l2"] is not None]),
        "faithfulness_l2_by_t0": {t0_label(t): _stats(v) for t, v in by_t0.items()} if len(by_t0) > 1 else {},
        "items_with_notes": counts.items_with_notes,
        "notes": dict(Counter(kind for _, kind in {(r["id"], _note_kind(note)) for r in rows if r["notes"]
                                                   for note in r["notes"].split("; ")}).most_common()),
        "files": _files(out_uri, options, input_options, draw, several_t0=len(by_t0) > 1),
    }
    return report


def render(report: Mapping[str, Any]) -> str:
    """The human-readable form of :func:`inspect_output`'s report."""
    r, s, m = report, report["sampling"], report["model"]
    size = "x".join(str(v) for v in m.get("image_size", [])) or "?"
    lines = [
        f"{r['out']}: {r['status'] or 'no status'} (job.json written {r['written_at']})",
        f"  model      {m.get('label', '?')} ({m.get('sde', '?')}, {m.get('channels', '?')} channel(s), {size})",
        f"  sampling   {', '.join(map(str, s['sampler']))}, {'/'.join(map(str, s['steps'])) or '?'} steps, "
        f"{s['passes']} pass(es), t0 {s['t0']}, {s['samples']} sample(s)/item, seed {s['seed']}",
        f"  outputs    {r['outputs']} ({r['outputs_ok']} ok, {r['outputs_failed']} failed) from "
        f"{r['items']} items ({r['items_failed']} failed)",
    ]
    if r["wall_s"] is not None:
        lines.append(f"  time       {r['wall_s']:.1f} s wall, {r['items_per_s']:.3f} items/s, "
                     f"{r['outputs_per_s']:.3f} outputs/s" + (f"; model {r['model_ms_per_output']:.0f} ms/output"
                                                             if r["model_ms_per_output"] is not None else ""))
    if r["resumed_outputs"]:
        lines.append(f"  resumed    {r['resumed_outputs']} outputs kept from an earlier run")
    lines.append("  t0         " + "   ".join(f"{t}: {n}" for t, n in r["t0_counts"].items()))
    lines.append("  faithfulness L2 (RMS per pixel in [0, 1], ok outputs):")
    lines.append("             t0        n     min      q1  median      q3     max    mean")
    for label, stats in [("all", r["faithfulness_l2"]), *r["faithfulness_l2_by_t0"].items()]:
        if stats["n"]:
            values = " ".join(f"{stats[k]:7.4f}" for k in ("min", "q1", "median", "q3", "max", "mean"))
            lines.append(f"             {label:<6} {stats['n']:>4} {values}")
    if r["items_with_notes"]:
        kinds = "; ".join(f"{kind} ({n})" for kind, n in r["notes"].items())
        lines.append(f"  notes      {r['items_with_notes']} item(s) had inputs converted: {kinds}")
    for reason, count in sorted(r["failures_by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        example = r["failure_examples"].get(reason, {})
        lines.append(f"  failed     {count} item(s): {reason} (e.g. {example.get('id')}: {example.get('error')})")
    for name, uri in r["files"].items():
        lines.append(f"  {name:<10} {uri}")
    return "\n".join(lines)


def _files(out_uri: str, options: Mapping[str, Any] | None, input_options: Mapping[str, Any] | None,
           draw: bool, several_t0: bool) -> dict[str, str]:
    """The sheets' URIs; missing ones are drawn first when ``draw`` (never fatal: they are pictures)."""
    from pipeline.sheet import make_sheet
    from pipeline.sweep import write_sweep_views

    fs, root = url_to_fs(out_uri, options)
    wanted = {"sheet": SHEET_FILE, **({"sweep": SWEEP_SHEET_FILE, "plot": SWEEP_PLOT_FILE} if several_t0 else {})}
    missing = [name for name, file in wanted.items() if not fs.exists(join_uri(root, file))]
    if draw and missing:
        try:
            if "sheet" in missing:
                make_sheet(out_uri, out_options=options, input_options=input_options)
            if several_t0 and {"sweep", "plot"} & set(missing):
                write_sweep_views(out_uri, out_options=options, input_options=input_options)
        except Exception:  # noqa: BLE001 - a picture that cannot be drawn is simply not listed
            pass
    return {name: join_uri(out_uri, file) for name, file in wanted.items() if fs.exists(join_uri(root, file))}


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    q = np.percentile(np.asarray(values, dtype=np.float64), [0, 25, 50, 75, 100])
    return {"n": len(values), "min": float(q[0]), "q1": float(q[1]), "median": float(q[2]),
            "q3": float(q[3]), "max": float(q[4]), "mean": float(np.mean(values))}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _distinct(values: Any) -> list[Any]:
    return sorted({v for v in values if v is not None})


def _note_kind(note: str) -> str:
    """``guide 20x24 fitted to 16x16 by resize`` -> ``guide NxN fitted to NxN by resize``: counted by kind."""
    return re.sub(r"\d+", "N", note.strip())
