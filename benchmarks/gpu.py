"""GPU benchmark: a 256x256 church-sized UNet at fp32 eager and with each execution option, the card's
bf16 matrix rate, the headline on the GPU, and the GPU tests. One script for one short device lease.

Usage: python benchmarks/gpu.py [--out DIR] [--budget-s 420] [--batch 32] [--skip-headline] [--skip-tests]

The network is diffusers' UNet2DModel with google/ddpm-church-256's architecture (block channels
128, 128, 256, 256, 512, 512; two layers per block; attention at 16x16; 3 channels, 256x256; about
114 M parameters) with random weights: the speed of a network does not depend on its weights. For each
option set it prints network evaluations per second (images/s at one model call each), the achieved
TFLOP/s (floating-point operations counted by torch's FlopCounterMode over the measured rate) against
the bf16 matrix rate measured on this card, and SDEdit edited images/s with the job's default sampler.
Results go to OUT/gpu.json (docs: ``python benchmarks/gpu.py --write-docs OUT/gpu.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, describe, machine, write_block  # noqa: E402

import sdedit_kernel as sk  # noqa: E402

PAGE = ROOT / "docs" / "performance.md"
OPTION_SETS: list[tuple[str, dict[str, Any]]] = [
    ("fp32 eager", {}),
    ("bf16 autocast", {"autocast": "bfloat16"}),
    ("bf16 autocast + channels_last", {"autocast": "bfloat16", "channels_last": True}),
    ("fp16 autocast + channels_last", {"autocast": "float16", "channels_last": True}),
    ("bf16 + channels_last + compile default", {"autocast": "bfloat16", "channels_last": True, "compile": "default"}),
    ("bf16 + channels_last + compile default + cudnn benchmark",
     {"autocast": "bfloat16", "channels_last": True, "compile": "default", "cudnn_benchmark": True}),
    ("bf16 + compile default + cudnn benchmark", {"autocast": "bfloat16", "compile": "default",
                                                  "cudnn_benchmark": True}),
    ("bf16 + channels_last + compile max-autotune-no-cudagraphs",
     {"autocast": "bfloat16", "channels_last": True, "compile": "max-autotune-no-cudagraphs"}),
]


def church_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    ).eval()


def timed(fn, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs, timed with CUDA events after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return sorted(times)[len(times) // 2]


def matmul_rate() -> float:
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / timed(lambda: x @ y, 10) / 1e12


def flops_per_image(net: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 256, 256, device="cuda")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.tensor([500.0], device="cuda"))
    return float(counter.get_total_flops())


def bench_options(batch: int, budget_end: float, reference: torch.Tensor, flops: float,
                  chosen: set[int] | None = None, save: Any = None) -> list[dict[str, Any]]:
    rows = []
    x = torch.randn(batch, 3, 256, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    guides = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    for index, (name, opts) in enumerate(OPTION_SETS):
        if chosen is not None and index not in chosen:
            continue
        if time.time() > budget_end - (90 if "compile" in opts else 20):
            print(f"skipped (time budget): {name}", flush=True)
            continue
        try:
            rows.append(_bench_one(name, opts, x, guides, reference, flops))
        except Exception as e:  # noqa: BLE001 - one failing option set must not cost the others
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            rows.append({"name": name, "options": opts, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = False  # each option set starts from PyTorch's defaults
        if save is not None:
            save(rows)
    return rows


def _bench_one(name: str, opts: dict[str, Any], x: torch.Tensor, guides: torch.Tensor, reference: torch.Tensor,
               flops: float) -> dict[str, Any]:
    batch = x.shape[0]
    torch._dynamo.reset()
    model = sk.ScoreModel(church_unet().cuda(), sk.VPSDE.linear())
    sk.accelerate(model, sk.ExecutionOptions(**opts))
    start = time.time()
    with torch.inference_mode():
        model.predict(x, 0.5)  # compiles here when asked
        torch.cuda.synchronize()
        warm_s = time.time() - start
        x0, _ = model.predict(x, 0.5)
        err = float((x0.float().cpu() - reference).norm() / reference.norm())
        per_call = timed(lambda m=model: m.predict(x, 0.5), 10)
        gens = [torch.Generator("cuda").manual_seed(i) for i in range(batch)]  # as the GPU actor draws
        edit_s = timed(lambda m=model, g=gens: sk.sdedit(m, guides, t0=0.5, sampler="dpmpp_2m_sde",
                                                        generator=g), 3)
    rate = batch / per_call
    row = {"name": name, "options": opts, "batch": batch, "evals_per_s": rate,
           "tflops": flops * rate / 1e12, "edited_per_s": batch / edit_s, "first_call_s": warm_s,
           "x0_rel_err_vs_fp32": err}
    print(f"{name:58s} {rate:8.1f} evals/s  {row['tflops']:6.1f} TFLOP/s  {row['edited_per_s']:7.2f} edited/s "
          f"(first call {warm_s:.0f} s, rel err {err:.1e})", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--budget-s", type=float, default=420)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-headline", action="store_true")
    p.add_argument("--sets", type=int, nargs="*", help="indices into OPTION_SETS (default: all)")
    p.add_argument("--write-docs", type=Path, help="write docs from an earlier OUT/gpu.json and exit")
    args = p.parse_args(argv)
    if args.write_docs:
        write_docs(json.loads(args.write_docs.read_text()))
        return
    end = time.time() + args.budget_s
    result: dict[str, Any] = {"machine": machine()}
    if not args.skip_tests:
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/kernel/test_execution.py",
                               "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT, timeout=240)
        result["gpu_tests"] = {"returncode": proc.returncode, "tail": proc.stdout[-1500:], "s": time.time() - t}
        print(proc.stdout[-800:], flush=True)
    result["bf16_matmul_tflops"] = matmul_rate()
    print(f"bf16 matmul 8192^3: {result['bf16_matmul_tflops']:.0f} TFLOP/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_headline:
        try:  # a failing section must not cost the others their device time
            import headline

            result["headline"] = headline.main(["--device", "cuda", "--pipeline-items", "0",
                                                "--eval-set", str(ROOT / ".devicecarry/evalset.npz")])
        except Exception as e:  # noqa: BLE001
            result["headline_error"] = f"{type(e).__name__}: {e}"
            print("headline failed:", result["headline_error"], flush=True)
        (args.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    ref_model = sk.ScoreModel(church_unet().cuda(), sk.VPSDE.linear())
    x = torch.randn(args.batch, 3, 256, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.inference_mode():
        reference = ref_model.predict(x, 0.5)[0].cpu()
    del ref_model
    flops = flops_per_image(church_unet().cuda())
    params = sum(p.numel() for p in church_unet().parameters())

    def save(rows: list[dict[str, Any]]) -> None:  # after every option set: a timeout loses nothing done
        result.update(church={"flops_per_eval": flops, "rows": rows, "params": params})
        (args.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))

    rows = bench_options(args.batch, end, reference, flops, set(args.sets) if args.sets else None, save)
    result.update(church={"flops_per_eval": flops, "rows": rows, "params": params})
    rows = [r for r in rows if "error" not in r] + [r for r in rows if "error" in r]
    base = rows[0].get("evals_per_s", float("nan"))
    for row in (r for r in rows if "error" not in r):
        row["speedup_vs_fp32_eager"] = row["evals_per_s"] / base
        row["fraction_of_bf16_matmul_rate"] = row["tflops"] / result["bf16_matmul_tflops"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"\n{'option set':58s} {'evals/s':>9s} {'speedup':>8s} {'TFLOP/s':>8s} {'of bf16 peak':>12s}")
    for row in (r for r in rows if "error" not in r):
        print(f"{row['name']:58s} {row['evals_per_s']:9.1f} {row['speedup_vs_fp32_eager']:7.2f}x "
              f"{row['tflops']:8.1f} {row['fraction_of_bf16_matmul_rate']:11.1%}")


def write_docs(result: dict[str, Any]) -> None:
    church = result["church"]
    lines = [
        f"Measured with `python benchmarks/gpu.py` on {describe(result['machine'])}. UNet2DModel with "
        f"google/ddpm-church-256's architecture ({church['params'] / 1e6:.1f} M parameters, random weights), "
        f"256x256x3, batch {church['rows'][0]['batch']}; {church['flops_per_eval'] / 1e9:.0f} GFLOP per network "
        f"evaluation (FlopCounterMode); the card's bf16 matrix rate measured in the same run: "
        f"{result['bf16_matmul_tflops']:.0f} TFLOP/s (8192^3 product).",
        "",
        "| options | network evals/s | vs fp32 eager | achieved TFLOP/s | of bf16 matrix rate | SDEdit edited "
        "images/s (dpmpp_2m_sde, 10 calls) | first call (s) | x0 rel. error vs fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in church["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['evals_per_s']:.1f} | **{r['speedup_vs_fp32_eager']:.2f}x** | "
                     f"{r['tflops']:.0f} | {r['fraction_of_bf16_matmul_rate']:.0%} | {r['edited_per_s']:.2f} | "
                     f"{r['first_call_s']:.0f} | {r['x0_rel_err_vs_fp32']:.1e} |")
    tests = result.get("gpu_tests")
    if tests:
        last = [ln for ln in tests["tail"].splitlines() if "passed" in ln or "failed" in ln]
        lines += ["", f"GPU tests (`pytest -m gpu tests/kernel/test_execution.py`) on that card: "
                  f"{last[-1].strip() if last else 'see gpu.json'}."]
    write_block(PAGE, "gpu", "\n".join(lines))
    if result.get("headline"):
        import headline

        headline.write_docs(result["headline"])


if __name__ == "__main__":
    main()
