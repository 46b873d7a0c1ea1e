"""Headline: edited images per hour of our default job against the official SDEdit algorithm, at equal quality.

Usage: python benchmarks/headline.py [--n 100] [--device cpu|cuda] [--pipeline-items 1000] [--threads 1]
                                     [--eval-set FILE.npz] [--save-eval-set FILE.npz] [--write-docs]

The official algorithm is the paper's code path: the "ancestral" sampler at its full t0 x 1000 model
calls, fp32, batch 8, in a plain loop. Ours is the job's default (sampling.sampler and its default
steps, batch 8): timed as a bare kernel loop and, on the CPU, as the whole Ray Data job over
``--pipeline-items`` items (the real thing a user runs: manifest, decode, actor, PNG writes, index).
On a GPU a third row adds the best execution options (bf16 autocast, channels_last, batch size from
memory). Every row's outputs are scored by the quality harness (docs/quality.md: stroke guides from
Fashion-MNIST test images, faithfulness L2 and KID with their standard errors) on the same guides
and seeds; "equal quality" means both differences are within their combined standard error.
All rows run in this one process, one after the other; ratios are of images per hour.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, describe, machine, write_block  # noqa: E402

import sdedit_kernel as sk  # noqa: E402
from pipeline.quality.harness import EvalConfig, EvalSet, Evaluator, build_eval_set, load_model  # noqa: E402

try:  # the spec owns the default; the GPU machine may lack pydantic, so the value is repeated there
    from pipeline.spec import DEFAULT_SAMPLER
except ImportError:
    DEFAULT_SAMPLER = "dpmpp_2m_sde"
T0 = 0.5
PAGE = ROOT / "docs" / "performance.md"


def save_eval_set(data: EvalSet, path: Path) -> None:
    np.savez_compressed(path, ids=np.array(data.ids), sources=data.sources.numpy(), labels=data.labels,
                        guides=data.guides.numpy(), real=data.real.numpy(), reference=data.reference.numpy(),
                        settings=json.dumps(data.settings))


def load_eval_set(path: Path) -> EvalSet:
    z = np.load(path)
    return EvalSet(ids=[str(i) for i in z["ids"]], sources=torch.from_numpy(z["sources"]), labels=z["labels"],
                   guides=torch.from_numpy(z["guides"]), real=torch.from_numpy(z["real"]),
                   reference=torch.from_numpy(z["reference"]), settings=json.loads(str(z["settings"])))


def images_per_s(model: sk.ScoreModel, guides: torch.Tensor, cfg: EvalConfig, batch: int, images: int) -> float:
    """Kernel throughput: ``images`` outputs (the guides cycled) in batches of ``batch``, synchronised."""
    reps = math.ceil(images / len(guides))
    pool = guides.repeat(reps, 1, 1, 1)[:images]
    warm = pool[: min(batch, 2)].to(model.device)
    sk.sdedit(model, warm, t0=cfg.t0, steps=1, sampler=cfg.sampler)  # allocations, kernel choice
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for lo in range(0, images, batch):
        chunk = pool[lo : lo + batch].to(model.device)
        gens = [sk.generator_for(0, f"t{lo + k}", 0, device=_rng_device(model)) for k in range(len(chunk))]
        sk.sdedit(model, chunk, t0=cfg.t0, steps=cfg.steps, sampler=cfg.sampler, generator=gens)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def _rng_device(model: sk.ScoreModel) -> torch.device:
    """Where the job's model actor draws noise: on the GPU when it runs there (pipeline/actor.py)."""
    return model.device if model.device.type == "cuda" else torch.device("cpu")


def run_pipeline(data: EvalSet, items: int, threads: int) -> tuple[float, torch.Tensor]:
    """The default job over ``items`` items (the eval guides first, then cycled): (wall s, first outputs)."""
    import pandas as pd
    import ray
    from PIL import Image

    from pipeline.jobfile import build_spec
    from pipeline.run import run_job

    tmp = Path(tempfile.mkdtemp(prefix="sdedit-headline-"))
    (tmp / "g").mkdir()
    for i, g in enumerate(data.guides):
        Image.fromarray((g[0].numpy() * 255).round().astype(np.uint8)).save(tmp / "g" / f"{i}.png")
    n = len(data.guides)
    rows = [f"e-{i:06d},g/{i % n}.png" for i in range(items)]
    (tmp / "m.csv").write_text("id,guide\n" + "\n".join(rows) + "\n")
    spec = build_spec({"input": {"manifest": str(tmp / "m.csv")},
                       "output": {"uri": str(tmp / "out"), "sheet_items": 0},
                       "model": {"uri": "fashion-mnist-ddpm"}, "sampling": {"t0": T0},
                       "resources": {"num_cpus": threads}})
    ray.init(address="local", num_cpus=threads + 1, include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    summary = run_job(spec, sheet=False)
    wall = time.perf_counter() - start
    ray.shutdown()
    assert summary.outputs_ok == items, summary
    df = pd.read_parquet(tmp / "out" / "index").set_index("id")
    outs = [np.asarray(Image.open(tmp / "out" / df.loc[f"e-{i:06d}", "image"]), np.float32) / 255 for i in range(n)]
    return wall, torch.from_numpy(np.stack(outs))[:, None]


def same_quality(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in ("kid", "l2"):
        diff = row[key] - ref[key]
        se = math.hypot(row[f"{key}_se"], ref[f"{key}_se"])
        out[f"{key}_diff"], out[f"{key}_se_combined"], out[f"{key}_within"] = diff, se, abs(diff) <= se
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="stroke guides scored (KID reference: 2000 real images)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU), as one model actor has")
    p.add_argument("--pipeline-items", type=int, default=1000, help="items in the whole-job row; 0: skip it")
    p.add_argument("--official-images", type=int, default=None, help="outputs timed for the official row")
    p.add_argument("--eval-set", type=Path, help="an .npz written by --save-eval-set (machines without the data)")
    p.add_argument("--save-eval-set", type=Path)
    p.add_argument("--json", type=Path, help="write the result here as JSON")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_eval_set(args.eval_set) if args.eval_set else build_eval_set(args.n, 2000)
    if args.save_eval_set:
        save_eval_set(data, args.save_eval_set)
        return {}
    info = machine()
    cuda = args.device.startswith("cuda")
    model = load_model("fashion-mnist-ddpm", device=args.device)
    official = EvalConfig("ancestral", T0, sk.resolve_steps(model, T0, None, "ancestral"))
    default = EvalConfig(DEFAULT_SAMPLER, T0, sk.resolve_steps(model, T0, None, DEFAULT_SAMPLER))
    rows: list[dict[str, Any]] = []

    def add(name: str, m: sk.ScoreModel, cfg: EvalConfig, batch: int, images: int, options: str) -> dict:
        quality = Evaluator(m, data, batch_size=batch, log=lambda *_: None).run(cfg)
        rate = images_per_s(m, data.guides, cfg, batch, images)
        row = {"name": name, "sampler": cfg.sampler, "steps": cfg.steps, "calls": quality["calls"],
               "batch": batch, "options": options, "images_per_h": 3600 * rate,
               **{k: quality[k] for k in ("l2", "l2_se", "kid", "kid_se")}}
        print(f"{name:40s} {cfg.sampler:14s} {quality['calls']:4d} calls  batch {batch:5d}  "
              f"{row['images_per_h']:12,.0f} images/h  L2 {row['l2']:.3f}+-{row['l2_se']:.3f}  "
              f"KID {row['kid']:.4f}+-{row['kid_se']:.4f}", flush=True)
        rows.append(row)
        return row

    ref = add("official (ancestral, every step, fp32)", model, official, 8,
              args.official_images or (80 if cuda else 16), "fp32 eager")
    add("ours: default job settings, bare kernel", model, default, 8, 800 if cuda else 256, "fp32 eager")
    if cuda:
        fast = sk.accelerate(load_model("fashion-mnist-ddpm", device=args.device),
                             sk.ExecutionOptions(autocast="bfloat16", channels_last=True))
        fast.sample_size = 28
        batch = sk.choose_batch_size(fast, limit=4096)
        add("ours: best options, bare kernel", fast, default, batch, 8 * batch,
            "bf16 autocast, channels_last, batch auto")
    if args.pipeline_items and not cuda:
        wall, outs = run_pipeline(data, args.pipeline_items, args.threads)
        scorer = Evaluator(model, data, log=lambda *_: None)
        quality = scorer.score(outs)
        row = {"name": f"ours: the default job end to end ({args.pipeline_items} items, Ray Data)",
               "sampler": default.sampler, "steps": default.steps, "calls": rows[-1]["calls"], "batch": 8,
               "options": "sdedit run defaults, PNG outputs", "images_per_h": 3600 * args.pipeline_items / wall,
               **{k: quality[k] for k in ("l2", "l2_se", "kid", "kid_se")}}
        print(f"{row['name']:40s} {row['images_per_h']:12,.0f} images/h  L2 {row['l2']:.3f}  KID {row['kid']:.4f}")
        rows.append(row)
    for row in rows:
        row["ratio"] = row["images_per_h"] / ref["images_per_h"]
        row.update(same_quality(row, ref))
    result = {"machine": info, "device": args.device, "threads": args.threads, "n": len(data.guides),
              "t0": T0, "rows": rows}
    for row in rows[1:]:
        print(f"ratio {row['ratio']:8.1f}x  {row['name']}  (KID within SE: {row['kid_within']}, "
              f"L2 within SE: {row['l2_within']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.write_docs:
        write_docs(result)
    return result


def write_docs(result: dict[str, Any]) -> None:
    cuda = result["device"].startswith("cuda")
    lines = [
        f"Measured with `python benchmarks/headline.py --device {result['device']}"
        f"{'' if cuda else ' --threads ' + str(result['threads'])}` on {describe(result['machine'])}. "
        f"t0 = {result['t0']}, {result['n']} stroke guides; KID against 2,000 real test images.",
        "",
        "| row | sampler | calls/image | batch | options | images/hour | ratio | L2 (± SE) | KID (± SE) | "
        "same quality? |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        same = "reference" if r["ratio"] == 1.0 else (
            "yes" if r["kid_within"] and r["l2_within"] else
            f"KID {'yes' if r['kid_within'] else 'no'}, L2 {'yes' if r['l2_within'] else 'no'}")
        lines.append(f"| {r['name']} | {r['sampler']} | {r['calls']} | {r['batch']} | {r['options']} | "
                     f"{r['images_per_h']:,.0f} | **{r['ratio']:.1f}x** | {r['l2']:.3f} ± {r['l2_se']:.3f} | "
                     f"{r['kid']:.4f} ± {r['kid_se']:.4f} | {same} |")
    write_block(PAGE, "headline-gpu" if cuda else "headline-cpu", "\n".join(lines))


if __name__ == "__main__":
    main()
