"""``sdedit tune-t0``: the paper's binary search for t0 on a few guides, written into a copy of the job.

The paper picks t0 for a task by a binary search on a few guides, then fixes it for the whole batch.
Faithfulness (the index's ``faithfulness_l2``) grows with t0 on average, so bisection finds the t0
whose mean L2 over a small random sample of the manifest meets a target. The sample runs in this
process through the same :class:`~pipeline.actor.SDEditor` the job uses (same decode, seeds and L2),
without an actor pool: a probe of 8 guides on the bundled 28x28 model takes about a second.

Only an L2 target is offered: realism (KID) is not monotone in t0 (on the bundled model it is lowest
near t0 = 0.5 to 0.6, docs/quality_t0.md), so a bisection on it is ill-posed, and it needs a set of
real reference images, which only the bundled Fashion-MNIST model has.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipeline.spec import JobSpec


@dataclass(frozen=True)
class Probe:
    """One evaluation: the mean faithfulness L2 of the sample's ok outputs at ``t0``, over ``n`` guides."""

    t0: float
    l2: float
    n: int


@dataclass(frozen=True)
class TuneResult:
    t0: float
    l2: float
    converged: bool  # |l2 - target| <= tolerance; else t0 is the closest probe
    probes: tuple[Probe, ...]


class TargetOutOfReach(ValueError):
    """The target L2 is below the L2 at ``lo`` or above the L2 at ``hi``."""


def bisect_t0(measure: Callable[[float], Probe], target: float, *, lo: float = 0.05, hi: float = 1.0,
              tolerance: float = 0.01, max_iters: int = 8, decimals: int = 4,
              on_probe: Callable[[Probe], None] | None = None) -> TuneResult:
    """Binary search of t0 in [lo, hi] for ``measure(t0).l2`` within ``tolerance`` of ``target``.

    ``measure`` is assumed to grow with t0 (true of L2 on average). The ends are probed first so an
    unreachable target fails at once, naming the reachable range; then at most ``max_iters``
    midpoints, rounded to ``decimals`` so the t0 written is exactly the t0 measured.
    """
    probes: list[Probe] = []

    def probe(t0: float) -> Probe:
        result = measure(t0)
        probes.append(result)
        if on_probe:
            on_probe(result)
        return result

    low, high = probe(lo), probe(hi)
    if target < low.l2 - tolerance or target > high.l2 + tolerance:
        side = "below the L2 at t0=" + str(lo) if target < low.l2 else "above the L2 at t0=" + str(hi)
        raise TargetOutOfReach(
            f"target L2 {target:g} is {side}: reachable on this sample is {low.l2:.4f} (t0={lo}) to "
            f"{high.l2:.4f} (t0={hi}); pick a target in that range or widen --lo/--hi"
        )
    for p in (low, high):
        if abs(p.l2 - target) <= tolerance:
            return TuneResult(p.t0, p.l2, True, tuple(probes))
    a, b = lo, hi
    for _ in range(max_iters):
        mid = round((a + b) / 2, decimals)
        if mid in (a, b):
            break  # the interval is below the rounding step
        p = probe(mid)
        if abs(p.l2 - target) <= tolerance:
            return TuneResult(p.t0, p.l2, True, tuple(probes))
        a, b = (mid, b) if p.l2 < target else (a, mid)
    best = min(probes, key=lambda q: abs(q.l2 - target))
    return TuneResult(best.t0, best.l2, False, tuple(probes))


class L2Probe:
    """Runs the job's model and sampler on a fixed sample of decoded guides at any t0 (in-process)."""

    def __init__(self, spec: JobSpec, plan: Any, work: pa.Table) -> None:
        import torch

        from pipeline.editing import Editor
        from pipeline.run import edit_settings

        device = spec.device if spec.device == "cpu" or torch.cuda.is_available() else "cpu"  # driver may lack a GPU
        # compile off: a few probes never repay minutes of compilation; autocast stays (it shapes outputs)
        self.editor = Editor(edit_settings(spec, plan, device=device, threads=os.cpu_count() or 1,
                                           model=spec.model.model_copy(update={"compile": "off"})))
        self.work = work

    def __call__(self, t0: float) -> Probe:
        rows = [{**row, "t0": t0} for row in self.work.to_pylist()]
        result = self.editor.edit_rows(rows)
        l2 = [r["faithfulness_l2"] for r in result if r["status"] == "ok"]
        if not l2:
            errors = {r["error"] for r in result}
            raise RuntimeError(f"no output at t0={t0}: {'; '.join(sorted(e for e in errors if e))}")
        return Probe(t0, sum(l2) / len(l2), len(l2))


def sample_guides(spec: JobSpec, plan: Any, n: int, seed: int) -> pa.Table:
    """Decoded work rows (sample 0) of ``n`` manifest items drawn at random with ``seed``, ok ones only.

    Items are shuffled in id order with ``seed`` (so the draw does not depend on manifest order or
    blocks) and decoded until ``n`` decode cleanly. Per-item t0 and samples are ignored (the job's
    t0 is what is tuned); a per-item seed is kept.
    """
    from pipeline.decode import decode_batch
    from pipeline.rows import MANIFEST_SCHEMA
    from pipeline.run import decode_settings
    from pipeline.shards import plan_shards, read_shard

    options = spec.options_for("input")
    shards = plan_shards(spec.input.manifests, spec.input.format, options, spec.input.shard_rows)
    rows = [r for shard in shards for r in read_shard(shard, options, plan.classes).to_pylist()]
    rows = sorted((r for r in rows if r["error"] is None), key=lambda r: r["id"])
    random.Random(seed).shuffle(rows)
    # The job's own decode settings, one t0 and one sample, and nothing recorded into OUT.
    one = spec.sampling.model_copy(update={"t0": spec.sampling.t0_values[0], "samples": 1})
    settings = replace(decode_settings(spec, plan), sampling=one, out_uri=None)
    chosen: list[pa.Table] = []
    count = 0
    for start in range(0, len(rows), n):
        if count >= n:
            break
        chunk = [{**r, "t0": None, "samples": None} for r in rows[start:start + n]]
        work = decode_batch(pa.Table.from_pylist(chunk, schema=MANIFEST_SCHEMA), settings)
        ok = work.filter(pc.equal(work.column("status"), "ok")).slice(0, n - count)
        chosen.append(ok)
        count += ok.num_rows
    if not count:
        raise ValueError("input.manifest: no item decodes cleanly; nothing to tune on")
    return pa.concat_tables(chosen)


def write_tuned_job(job_path: str | Path, out_path: str | Path, t0: float, note: str) -> bool:
    """Copy the job file with ``sampling.t0`` set to ``t0``; returns whether the comments were kept.

    A targeted edit of the one line keeps the user's file as it was (comments, order, quoting); when
    the file's layout defeats it (flow style, anchors...), the YAML is loaded, set and dumped, which
    drops comments. Either way the result is checked to load to the original with only t0 changed.
    """
    text = Path(job_path).read_text()
    expected = yaml.safe_load(text) or {}
    expected.setdefault("sampling", {})["t0"] = t0
    edited = _set_t0_line(text, t0, note)
    kept = edited is not None and yaml.safe_load(edited) == expected
    Path(out_path).write_text(edited if kept and edited is not None else
                              f"# {note}\n" + yaml.safe_dump(expected, sort_keys=False))
    return kept


_TOP_KEY = re.compile(r"^[^\s#][^:]*:")
_T0_LINE = re.compile(r"^(?P<indent>[ ]+)t0:[ \t]*(?P<value>\[[^\]#]*\]|[^\s#]+)?(?P<comment>[ \t]*#.*)?$")


def _set_t0_line(text: str, t0: float, note: str) -> str | None:
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.match(r"^sampling:[ \t]*(#.*)?$", line.rstrip("\n"))]
    if len(starts) != 1:
        return None
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if _TOP_KEY.match(lines[i])), len(lines))
    for i in range(start + 1, end):
        match = _T0_LINE.match(lines[i].rstrip("\n"))
        if match and match.group("value"):
            lines[i] = f"{match.group('indent')}t0: {t0}  # {note}\n"
            return "".join(lines)
    indents = [len(line) - len(line.lstrip(" ")) for line in lines[start + 1:end] if line.strip()]
    lines.insert(start + 1, f"{' ' * (min(indents) if indents else 2)}t0: {t0}  # {note}\n")
    return "".join(lines)
