"""Pipeline vs bare loop: what the Ray Data job costs over calling ``sdedit`` in a plain loop.

Usage: python benchmarks/pipeline_vs_bare.py [--items 64] [--t0 0.2] [--batch-size 16] [--threads 1]
                                             [--device cpu] [--write-docs]

The same items (the bundled sample guides, cycled), the same model, batches and torch threads go
(1) through a bare loop in this process: decoded guides -> ``sdedit`` per batch, nothing else, and
(2) through the whole pipeline (``run_job``: manifest, decode, one model actor, write, index).
Both are timed in one run, on one machine, and printed side by side with their ratio; with
``--write-docs`` the result and the machine are written into docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "pipeline.md"
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


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
    """Seconds for the bare loop: pre-decoded guides, ``sdedit`` on each batch of the same size."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import torch

    from pipeline.builtin import resolve_model_uri
    from pipeline.decode import DecodeSettings, decode_batch
    from pipeline.manifest import normalize_batch
    from sdedit_kernel import load_score_model, sdedit

    torch.set_num_threads(spec.resources.threads)
    model = load_score_model(resolve_model_uri(spec.model.uri), device=device)
    size = model.sample_size if isinstance(model.sample_size, int) else model.sample_size[0]
    strings = {"id": pa.string(), "guide": pa.string(), "mask": pa.string()}
    raw = pacsv.read_csv(manifest, convert_options=pacsv.ConvertOptions(
        column_types=strings, strings_can_be_null=True))
    raw = raw.append_column("path", pa.array([str(manifest)] * raw.num_rows))
    work = decode_batch(normalize_batch(raw), DecodeSettings(
        channels=model.channels, height=size, width=size, policy="resize", t0=spec.sampling.t0,
        seed=spec.sampling.seed, samples=1)).to_pylist()
    shape = (size, size, model.channels)
    start = time.perf_counter()
    bs = spec.resources.batch_size
    for lo in range(0, len(work), bs):
        batch = work[lo : lo + bs]
        pixels = np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(shape) for r in batch])
        guide = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0)
        gens = [torch.Generator().manual_seed(r["seed"]) for r in batch]
        masks = [r["edit_mask"] for r in batch]
        # The pipeline calls the kernel per group of masked / unmasked rows; so does the loop.
        for has_mask in (False, True):
            idx = [i for i, m in enumerate(masks) if (m is not None) == has_mask]
            if not idx:
                continue
            edit_mask = None
            if has_mask:
                bits = np.stack([np.frombuffer(masks[i], np.uint8).reshape(1, size, size) for i in idx])
                edit_mask = torch.from_numpy(bits).float()
            sdedit(model, guide[idx].to(model.device), t0=spec.sampling.t0, steps=spec.sampling.steps,
                   sampler=spec.sampling.sampler, edit_mask=edit_mask, passes=spec.sampling.passes,
                   generator=[gens[i] for i in idx])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pipeline_run(spec: Any) -> float:
    from pipeline.run import run_job

    start = time.perf_counter()
    summary = run_job(spec, sheet=False)
    if summary.outputs_failed:
        raise SystemExit(f"pipeline run had failures: {summary.failures_by_reason}")
    return time.perf_counter() - start


def write_docs(result: dict[str, Any], note: str = "") -> None:
    m, r = result["machine"], result
    block = "\n".join([
        START,
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/pipeline_vs_bare.py "
        f"--items {r['items']} --t0 {r['t0']} --batch-size {r['batch_size']} --threads {r['threads']} "
        f"--device {r['device']}`:",
        "",
        "| path | wall (s) | items/s |",
        "|---|---|---|",
        f"| bare loop (`sdedit` per batch, one process) | {r['bare_s']:.1f} | {r['bare_items_per_s']:.3f} |",
        f"| full pipeline (`run_job`, 1 actor) | {r['pipeline_s']:.1f} | {r['pipeline_items_per_s']:.3f} |",
        f"| **ratio pipeline / bare** | | **{r['ratio']:.2f}** |",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; Python {m['python']}, "
        f"torch {m['torch']}; 1-minute load average at start {m['load_avg_1m_at_start']}. "
        f"Model `{r['model']}`, sampler `{r['sampler']}`, {r['steps']} steps per output. "
        f"The pipeline's extra wall time, {r['pipeline_s'] - r['bare_s']:.0f} s, is mostly fixed (Ray Data "
        "planning, actor start and model load, index write), so the ratio rises towards 1 with the job size."
        + (f" {note}" if note else ""),
        END,
    ])
    text = DOCS.read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n" + block + "\n"
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fashion-mnist-ddpm")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--t0", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU for the actor and the loop)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--note", default="", help="a sentence about the conditions, added to the docs")
    args = p.parse_args(argv)

    import ray

    from pipeline.builtin import resolve_model_uri
    from pipeline.jobfile import build_spec
    from sdedit_kernel import load_score_model, resolve_steps

    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="sdedit-bench-"))
    try:
        manifest = make_items(tmp, args.items)
        gpus = 1 if args.device.startswith("cuda") else 0
        spec = build_spec({
            "input": {"manifest": str(manifest)}, "output": {"uri": str(tmp / "out"), "sheet_items": 0},
            "model": {"uri": args.model, "device": args.device},
            "sampling": {"t0": args.t0, "steps": args.steps, "samples_per_item": 1, "seed": 0},
            "resources": {"actors": 1, "batch_size": args.batch_size, "num_cpus": args.threads,
                          "num_gpus": gpus},
        })
        steps = resolve_steps(load_score_model(resolve_model_uri(args.model)), args.t0, args.steps,
                              spec.sampling.sampler)
        # Room for the actor (threads CPUs) plus the light decode / write tasks.
        ray.init(num_cpus=max(os.cpu_count() or 2, args.threads + 1), include_dashboard=False,
                 logging_level="warning")
        ray.data.DataContext.get_current().enable_progress_bars = False
        bare_s = bare_loop(spec, manifest, args.device)
        pipe_s = pipeline_run(spec)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "items": args.items, "t0": args.t0, "steps": steps, "sampler": spec.sampling.sampler,
        "batch_size": args.batch_size, "threads": args.threads, "device": args.device, "model": args.model,
        "bare_s": bare_s, "pipeline_s": pipe_s, "bare_items_per_s": args.items / bare_s,
        "pipeline_items_per_s": args.items / pipe_s, "ratio": bare_s / pipe_s, "machine": info,
    }
    print(f"bare loop : {bare_s:8.1f} s  {result['bare_items_per_s']:.3f} items/s")
    print(f"pipeline  : {pipe_s:8.1f} s  {result['pipeline_items_per_s']:.3f} items/s")
    print(f"ratio pipeline/bare (items/s): {result['ratio']:.2f}")
    print(json.dumps(result))
    if args.write_docs:
        write_docs(result, args.note)
    return result


if __name__ == "__main__":
    main()
