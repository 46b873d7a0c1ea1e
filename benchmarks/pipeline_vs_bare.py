"""Pipeline vs bare loop: what the Ray Data job costs over calling ``sdedit`` in a plain loop.

Usage: python benchmarks/pipeline_vs_bare.py [--items 2000] [--small 200] [--t0 0.5] [--batch-size 8]
                                             [--threads 1] [--device cpu] [--write-docs]

The same items (the bundled sample guides, cycled), the same model, sampler (the job's default),
batches and torch threads go (1) through a bare loop in this process: decoded guides -> ``sdedit``
per batch, nothing else, and (2) through the whole pipeline (``run_job``: manifest, decode, one
model actor, PNG writes, index), at two job sizes. The two sizes split the pipeline's wall time into
a fixed cost F and a steady rate r (wall = F + items / r), so the result says both what a job of
``--items`` items costs end to end and what the pipeline costs per item once it runs. All runs are
in this one process, one after the other; with ``--write-docs`` the result and the machine are
written into docs/performance.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, describe, machine, write_block  # noqa: E402

PAGE = ROOT / "docs" / "performance.md"


def make_items(folder: Path, n: int) -> Path:
    """n manifest rows over the bundled sample guides (the masked edit keeps its mask)."""
    samples = ROOT / "pipeline" / "assets" / "samples"
    with open(samples / "manifest.csv") as f:
        base = list(csv.DictReader(f))
    rows = []
    for i in range(n):
        src = base[i % len(base)]
        mask = str(samples / src["mask"]) if src["mask"] else ""
        rows.append({"id": f"item-{i:04d}", "guide": str(samples / src["guide"]), "mask": mask})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "guide", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def bare_loop(spec: Any, manifest: Path, device: str) -> float:
    """Seconds for the bare loop: pre-decoded guides, the job's own editor on each batch of the same size.

    The editor (pipeline.editing.Editor) is what every model actor runs: it groups a batch by t0 and
    mask exactly as the job does. The loop leaves out everything else: Ray, decoding, writing.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import torch

    from pipeline.decode import decode_batch
    from pipeline.editing import Editor
    from pipeline.manifest import normalize_batch
    from pipeline.run import decode_settings, edit_settings, preflight

    plan = preflight(spec)
    editor = Editor(edit_settings(spec, plan, device=device))
    strings = {"id": pa.string(), "guide": pa.string(), "mask": pa.string()}
    raw = pacsv.read_csv(manifest, convert_options=pacsv.ConvertOptions(
        column_types=strings, strings_can_be_null=True))
    raw = raw.append_column("path", pa.array([str(manifest)] * raw.num_rows))
    settings = decode_settings(spec, plan)
    work = decode_batch(normalize_batch(raw), replace(settings, out_uri=None)).to_pylist()
    start = time.perf_counter()
    bs = spec.resources.batch_size
    for lo in range(0, len(work), bs):
        editor.edit_rows(work[lo : lo + bs])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pipeline_run(spec: Any) -> tuple[float, dict[str, float]]:
    from pipeline.run import run_job

    start = time.perf_counter()
    summary = run_job(spec, sheet=False)
    if summary.outputs_failed:
        raise SystemExit(f"pipeline run had failures: {summary.failures_by_reason}")
    wall = time.perf_counter() - start
    phases = json.loads((Path(spec.output.uri) / "job.json").read_text())["phases_s"]
    return wall, phases


def mid_run_rate(out: Path, low: float = 0.1, high: float = 0.9) -> float:
    """Outputs/s between the 10th and the 90th percentile of the output files' write times: the steady
    rate of one run, with neither the start (actor start, first blocks) nor the drain in it."""
    times = sorted(p.stat().st_mtime for p in (out / "images").rglob("*.png"))
    a, b = int(low * (len(times) - 1)), int(high * (len(times) - 1))
    return (b - a) / max(times[b] - times[a], 1e-9)


def whole_command(job: dict[str, Any], folder: Path, *extra: str) -> float:
    """Seconds of ``sdedit run JOB`` in a fresh process (Python start to exit, private Ray if any)."""
    from small_job import whole_command as timed_command

    job_file = folder / "job.json"
    job_file.write_text(json.dumps({**job, "output": {**job["output"], "if_exists": "overwrite"}}))
    return timed_command(job_file, Path(job["output"]["uri"]), "--no-sheet", *extra)["command_s"]


def write_docs(r: dict[str, Any]) -> None:
    text = "\n".join([
        f"Measured with `python benchmarks/pipeline_vs_bare.py --items {r['items']} --small {r['small']} "
        f"--t0 {r['t0']} --batch-size {r['batch_size']} --threads {r['threads']} --device {r['device']}` on "
        f"{describe(r['machine'])}. Model `{r['model']}`, sampler `{r['sampler']}`, {r['steps']} steps per output.",
        "",
        "| path | items | wall (s) | items/s |",
        "|---|---|---|---|",
        f"| bare loop (the job's editor per batch, one process) | {r['items']} | {r['bare_s']:.1f} | "
        f"{r['bare_rate']:.2f} |",
        *(f"| full pipeline on Ray (`run_job`, 1 actor) | {n} | {wall:.1f} | {n / wall:.2f} |"
          for n, wall in ((r["small"], r["small_s"]), (r["items"], r["pipeline_s"]))),
        f"| **end to end, pipeline / bare, {r['items']} items** | | | **{r['ratio']:.2f}** |",
        f"| **steady state, pipeline / bare** (marginal rate between the two sizes) | | | "
        f"**{r['steady_ratio']:.2f}** |",
        f"| **steady state, pipeline / bare** (the {r['items']}-item run between its 10th and 90th percentile "
        f"output) | | | **{r['mid_ratio']:.2f}** |",
        *(f"| whole command `sdedit run` in a fresh process, executor {k} | {r['small']} | {v:.1f} | "
          f"{r['small'] / v:.2f} (**{r['command_ratio'][k]:.2f}** of bare) |" for k, v in r["command_s"].items()),
        "",
        f"The first job on the fresh Ray instance ({r['cold_items']} items) took {r['cold_s']:.1f} s (phases, s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["cold_phases"].items())
        + "): it also starts Ray's worker processes; the two timed sizes ran after it, warm, as on a "
        "long-lived cluster.",
        "",
        f"Fixed cost F = {r['fixed_s']:.1f} s per job (phases of the {r['items']}-item run, s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
        + "). Reading the manifests includes the duplicate-id check and Ray Data's import in the driver; the "
        "model actor (a new process importing torch and diffusers, then loading the model) starts as reading "
        "begins and its first batch waits for it, in the execute phase. The whole-command rows are the small "
        "job as a user runs it: `sdedit run` in a fresh process, timed from spawn to exit, with the executor "
        "`auto` picks (local: in the process itself) and forced onto Ray (a private instance started and "
        "stopped by the command).",
    ])
    write_block(PAGE, "pipeline-vs-bare", text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fashion-mnist-ddpm")
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--small", type=int, default=200, help="the smaller job, for the fixed cost")
    p.add_argument("--t0", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU for the actor and the loop)")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)

    import ray

    from pipeline.builtin import resolve_model_uri
    from pipeline.jobfile import build_spec
    from sdedit_kernel import load_score_model, resolve_steps

    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="sdedit-bench-"))

    def job_for(items: int) -> dict[str, Any]:
        folder = tmp / f"n{items}"
        folder.mkdir(exist_ok=True)
        gpus = 1 if args.device.startswith("cuda") else 0
        return {
            "input": {"manifest": str(make_items(folder, items))},
            "output": {"uri": str(folder / "out"), "sheet_items": 0},
            "model": {"uri": args.model, "device": args.device},
            "sampling": {"t0": args.t0, "steps": args.steps, "samples": 1, "seed": 0},
            "resources": {"actors": 1, "batch_size": args.batch_size, "num_cpus": args.threads, "num_gpus": gpus},
        }

    def spec_for(items: int) -> Any:
        return build_spec(job_for(items))

    try:
        big, small = spec_for(args.items), spec_for(args.small)
        steps = resolve_steps(load_score_model(resolve_model_uri(args.model)), args.t0, args.steps,
                              big.sampling.sampler)
        # Room for the actor (threads CPUs) plus the light decode / write tasks.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 2, args.threads + 1), include_dashboard=False,
                 logging_level="warning")
        ray.data.DataContext.get_current().enable_progress_bars = False
        # A first job on a fresh Ray instance also starts its worker processes (cold start): reported on
        # its own, so that the two timed sizes are both warm, as on a long-lived cluster.
        cold_s, cold_phases = pipeline_run(spec_for(args.small // 4 or 1))
        small_s, _ = pipeline_run(small)
        bare_s = bare_loop(big, Path(big.input.manifest), args.device)
        pipe_s, phases = pipeline_run(big)
        mid_rate = mid_run_rate(Path(big.output.uri))
        ray.shutdown()
        # The small job as a user runs it: the whole command in a fresh process, with the executor auto
        # picks (local for a job this small) and on Ray (a private instance).
        small_job = job_for(args.small)
        command_s = {"auto": whole_command(small_job, tmp / f"n{args.small}"),
                     "ray": whole_command(small_job, tmp / f"n{args.small}", "--set", "resources.executor=ray")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    marginal = (args.items - args.small) / max(pipe_s - small_s, 1e-9)
    result = {
        "items": args.items, "small": args.small, "t0": args.t0, "steps": steps, "sampler": big.sampling.sampler,
        "batch_size": args.batch_size, "threads": args.threads, "device": args.device, "model": args.model,
        "bare_s": bare_s, "pipeline_s": pipe_s, "small_s": small_s, "bare_rate": args.items / bare_s,
        "pipeline_rate": args.items / pipe_s, "ratio": bare_s / pipe_s, "marginal_rate": marginal,
        "steady_ratio": marginal / (args.items / bare_s), "fixed_s": pipe_s - args.items / marginal,
        "phases": phases, "machine": info, "cold_items": args.small // 4 or 1, "cold_s": cold_s,
        "cold_phases": cold_phases, "mid_rate": mid_rate, "mid_ratio": mid_rate / (args.items / bare_s),
        "command_s": command_s,
        "command_ratio": {k: (args.small / v) / (args.items / bare_s) for k, v in command_s.items()},
    }
    print(f"bare loop      : {args.items:6d} items {bare_s:8.1f} s  {result['bare_rate']:.2f} items/s")
    print(f"first job, cold: {result['cold_items']:5d} items {cold_s:8.1f} s  phases {cold_phases}")
    print(f"pipeline small : {args.small:6d} items {small_s:8.1f} s")
    print(f"pipeline       : {args.items:6d} items {pipe_s:8.1f} s  {result['pipeline_rate']:.2f} items/s")
    print(f"end-to-end ratio {result['ratio']:.2f}; steady-state ratio {result['steady_ratio']:.2f}; "
          f"fixed cost {result['fixed_s']:.1f} s; phases {phases}")
    print(f"mid-run rate {mid_rate:.2f} items/s, ratio {result['mid_ratio']:.2f}")
    for k, v in command_s.items():
        print(f"whole command, executor {k}: {args.small} items {v:.1f} s, ratio {result['command_ratio'][k]:.2f}")
    print(json.dumps(result))
    if args.write_docs:
        write_docs(result)
    return result


if __name__ == "__main__":
    main()
