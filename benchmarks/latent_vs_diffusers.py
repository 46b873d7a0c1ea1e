"""Latent SDEdit against diffusers' StableDiffusionImg2ImgPipeline on the CPU, and the memory of a large load.

Usage: python benchmarks/latent_vs_diffusers.py [--skip-large] [--repeats 5] [--write-docs]

1. Parity: for each of our samplers and the diffusers scheduler it equals (trailing spacing, same
   start latents and per-item generators; see tests/kernel/test_latent_parity.py), the largest
   absolute difference of the final latents and of the decoded pixels, on SD 1.x- and 2.x-shaped
   tiny random models, guided (w = 4.5, a negative prompt on some items).
2. Speed: images/s of `sdedit` and of the diffusers pipeline on the same folder, same pixel guides,
   sampler/scheduler (DDIM, eta 0), steps, batch, dtype (float32), guidance and prompts; timed side by
   side in one process, alternating, after one warm-up call each; the median of `--repeats` calls.
   Two sizes at 64 x 64 pixels: the tests' "tiny" model (overhead-dominated) and a "small" one.
3. Loading memory (skipped with --skip-large): an SD-1.5-sized random checkpoint (UNet
   320/640/1280/1280, cross-attention 768; SD's AutoencoderKL 128/256/512/512; a 12-layer 768-wide CLIP
   text model) is written as float16 safetensors to a temporary folder, then loaded in a FRESH
   process: peak RSS (VmHWM) above the process's RSS after its imports, against the files' size;
   for ours into float16 (zero copy), ours into float32 (converted while read), and diffusers' own
   StableDiffusionPipeline.from_pretrained(torch_dtype=float16) as this environment runs it (no
   `accelerate` installed, so without its low_cpu_mem_usage path). The folder is deleted afterwards.

torch runs on one thread (the machine is shared). The tiny recipe comes from tests/kernel/latent_models.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernel"))
from common import ROOT, describe, machine, write_block  # noqa: E402
from latent_models import SCHEDULERS, guides, save_sd_folder, write_clip_tokenizer  # noqa: E402

from sdedit_kernel import load_score_model, sdedit  # noqa: E402

PAGE = ROOT / "docs" / "latent.md"
PROMPTS = ["a photo of a cat", "a red house", "a photo of a cat"]
NEGATIVES = [None, "blue", "dog"]
PARITY = [  # (our sampler, options, diffusers scheduler, its config changes, pipeline extras)
    ("ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True}, {}),
    ("ddim", {"eta": 1.0}, "DDIMScheduler", {"set_alpha_to_one": True}, {"eta": 1.0}),
    ("ddim", {}, "EulerDiscreteScheduler", {}, {}),
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {}, {}),
    ("dpmpp_2m_sde", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("ancestral", {}, "DDPMScheduler", {"variance_type": "fixed_small", "clip_sample": False}, {}),
]
SIZES = {"tiny": {}, "small": {"unet_channels": (64, 128, 128), "vae_channels": (32, 64, 64, 64),
                               "text_width": 64, "text_layers": 4}}


def _quiet() -> None:
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()


def _pipeline(root: Path, cls: str = "StableDiffusionImg2ImgPipeline") -> Any:
    import diffusers

    pipe = getattr(diffusers, cls).from_pretrained(root, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


# -- 1. parity ---------------------------------------------------------------------------------
def _errors(model: Any, pipe: Any, g: torch.Tensor, sampler: str, options: dict[str, Any],
            extra: dict[str, Any], mask: torch.Tensor | None = None) -> dict[str, float]:
    """Largest differences of final latents and pixels (edited pixels only, with a mask) at t0 0.5, 5 steps."""
    seen: list[torch.Tensor] = []
    ours = sdedit(model, g, t0=0.5, steps=5, sampler=sampler, prompts=PROMPTS, negative_prompts=NEGATIVES,
                  guidance_scale=4.5, generator=_gens(3), edit_mask=mask, callback=lambda p, x: seen.append(x),
                  **options)
    latents = model.to_model_space(g)
    kw = dict(prompt=PROMPTS, negative_prompt=["" if n is None else n for n in NEGATIVES], image=latents,
              strength=0.5, num_inference_steps=10, guidance_scale=4.5, **extra)
    if mask is not None:  # the 4-channel inpainting pipeline, given latents for both of its images
        kw.update(mask_image=mask, masked_image_latents=latents, height=g.shape[2], width=g.shape[3])
    theirs_lat = pipe(**kw, generator=_gens(3), output_type="latent").images
    theirs = pipe(**kw, generator=_gens(3), output_type="pt").images
    edited = torch.ones_like(g, dtype=torch.bool) if mask is None else mask.expand_as(g) == 1
    return {"latent_err": float((seen[-1] - theirs_lat).abs().max()),
            "pixel_err": float((ours - theirs)[edited].abs().max()), "latent_scale": float(theirs_lat.abs().max())}


def parity(tmp: Path) -> list[dict[str, Any]]:
    import diffusers

    rows = []
    for kind in ("sd1", "sd2"):
        root = save_sd_folder(tmp / f"parity-{kind}", kind, seed=3)
        model, pipe = load_score_model(root), _pipeline(root)
        base = dict(pipe.scheduler.config)
        g = guides(3)
        for sampler, options, scheduler, changes, extra in PARITY:
            pipe.scheduler = getattr(diffusers, scheduler).from_config(base, timestep_spacing="trailing", **changes)
            rows.append({"model": kind, "sampler": sampler + ("(eta=1)" if options else ""),
                         "scheduler": scheduler + (f" {changes}" if changes else ""),
                         **_errors(model, pipe, g, sampler, options, extra)})
            print(rows[-1], flush=True)
        inpaint = _pipeline(root, "StableDiffusionInpaintPipeline")
        inpaint.scheduler = diffusers.DDIMScheduler.from_config(base, timestep_spacing="trailing",
                                                                set_alpha_to_one=True)
        mask = torch.zeros(3, 1, g.shape[2], g.shape[3])
        mask[:, :, 8:40, 16:48] = 1  # on the 8-pixel grid: nearest resize and our any-pixel rule agree
        rows.append({"model": kind, "sampler": "ddim, masked", "scheduler": "DDIMScheduler {'set_alpha_to_one': "
                     "True}, StableDiffusionInpaintPipeline (edited pixels)",
                     **_errors(model, inpaint, g, "ddim", {}, {}, mask)})
        print(rows[-1], flush=True)
    return rows


# -- 2. speed ----------------------------------------------------------------------------------
def _time_pair(model: Any, pipe: Any, batch: int, t0: float, steps: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of ours and of diffusers on the same inputs, alternating, after a warm-up each."""
    g = guides(batch)
    prompts = [f"a photo of a {w}" for w in ("cat", "dog", "tree", "house", "red cat", "blue dog")][:batch]

    def ours() -> None:
        sdedit(model, g, t0=t0, steps=steps, sampler="ddim", prompts=prompts, guidance_scale=7.5,
               generator=_gens(batch))

    def theirs() -> None:
        pipe(prompt=prompts, image=g, strength=t0, num_inference_steps=round(steps / t0), guidance_scale=7.5,
             generator=_gens(batch), output_type="pt")

    times: dict[str, list[float]] = {"ours": [], "diffusers": [], "ours_cpu": [], "diffusers_cpu": []}
    for fn in (ours, theirs):
        fn()
    for _ in range(repeats):
        for key, fn in (("ours", ours), ("diffusers", theirs)):
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            times[key].append(time.perf_counter() - start)
            times[key + "_cpu"].append(time.process_time() - cpu)
    return times


def speed(tmp: Path, repeats: int, batch: int = 4, t0: float = 0.6, steps: int = 15) -> list[dict[str, Any]]:
    from diffusers import DDIMScheduler

    rows = []
    for name, widths in SIZES.items():
        root = save_sd_folder(tmp / f"speed-{name}", "sd1", seed=0, **widths)
        model, pipe = load_score_model(root), _pipeline(root)
        pipe.scheduler = DDIMScheduler.from_config(dict(pipe.scheduler.config), timestep_spacing="trailing",
                                                   set_alpha_to_one=True)
        times = _time_pair(model, pipe, batch, t0, steps, repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        # each round times the two back to back: the median of the rounds' ratios resists the load drifting
        rounds = [d / o for o, d in zip(times["ours"], times["diffusers"])]
        cpu_rounds = [d / o for o, d in zip(times["ours_cpu"], times["diffusers_cpu"])]
        rows.append({"size": name, "unet_params": sum(p.numel() for p in model.net.parameters()), "batch": batch,
                     "steps": steps, "ours_img_s": batch / med["ours"], "diffusers_img_s": batch / med["diffusers"],
                     "ratio": statistics.median(rounds), "ratio_best": min(times["diffusers"]) / min(times["ours"]),
                     "ratio_range": [round(min(rounds), 2), round(max(rounds), 2)],
                     "cpu_ratio": statistics.median(cpu_rounds),
                     "cpu_ratio_range": [round(min(cpu_rounds), 2), round(max(cpu_rounds), 2)],
                     "spread_s": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()}})
        print(rows[-1], flush=True)
    return rows


# -- 3. loading memory -------------------------------------------------------------------------
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)


def _random_weights(module: torch.nn.Module, path: Path) -> None:
    """Random float16 weights for a module built on the meta device, written as safetensors."""
    from safetensors.torch import save_file

    state = {k: torch.empty(v.shape, dtype=torch.float16).normal_(0, 0.02) for k, v in module.state_dict().items()}
    save_file(state, str(path))


def write_sd15(root: Path) -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root.mkdir(parents=True)
    vocab = write_clip_tokenizer(root / "tokenizer")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD_VAE)
        text_cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab - 2,
                                  eos_token_id=vocab - 1, pad_token_id=vocab - 1)
        text = CLIPTextModel(text_cfg)
    for name, module, weights in (("unet", unet, "diffusion_pytorch_model.safetensors"),
                                  ("vae", vae, "diffusion_pytorch_model.safetensors"),
                                  ("text_encoder", text, "model.safetensors")):
        (root / name).mkdir()
        if name == "text_encoder":
            text_cfg.save_pretrained(root / name)
        else:
            module.save_config(root / name)
        _random_weights(module, root / name / weights)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS["sd1"]))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None]}))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


PROBE = r"""
import json, re, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
def status():
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) / 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging
from transformers import CLIPTextModel, CLIPTokenizer
from sdedit_kernel import load_score_model
logging.set_verbosity_error()
how, root = sys.argv[1], sys.argv[2]
base = status()["VmRSS"]
start = time.perf_counter()
if how == "diffusers":
    obj = StableDiffusionPipeline.from_pretrained(root, torch_dtype=torch.float16, safety_checker=None,
                                                  requires_safety_checker=False)
    nets = [obj.unet, obj.vae, obj.text_encoder]
else:
    obj = load_score_model(root, dtype=torch.float16 if how == "ours_fp16" else torch.float32)
    nets = [obj.net, obj.vae, obj.text.model]
seconds = time.perf_counter() - start
touched = sum(float(p.float().sum()) for n in nets for p in n.parameters())  # every weight resident
after = status()
digest_seconds = None
if how == "ours_fp16":  # how long the content digest takes alone (sha256 of every file)
    from sdedit_kernel.cache import content_digest
    from sdedit_kernel.components import read_latent_layout
    from sdedit_kernel.store import Store
    store = Store(root)
    files = read_latent_layout(store, store.json("model_index.json")).files()
    t = time.perf_counter()
    content_digest(store, files)
    digest_seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "digest_seconds": digest_seconds, "peak_mib": after["VmHWM"] - base,
                  "rss_mib": after["VmRSS"] - base,
                  "rss_file_mib": after["RssFile"], "rss_anon_mib": after["RssAnon"], "base_mib": base,
                  "params": sum(p.numel() for n in nets for p in n.parameters())}))
"""


def loading_memory(tmp: Path) -> dict[str, Any]:
    free = shutil.disk_usage(tmp).free
    if free < 6 * 2**30:
        raise SystemExit(f"only {free / 2**30:.1f} GiB free under {tmp}: need 6 GiB for the SD-1.5-sized checkpoint")
    root = tmp / "sd15"
    try:
        start = time.perf_counter()
        size = write_sd15(root)
        print(f"wrote {size / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s", flush=True)
        weights = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SDEDIT_CACHE": str(tmp / "cache")}
        result: dict[str, Any] = {"files_mib": size / 2**20, "weights_mib": weights / 2**20}
        # ours_fp16 twice: the first load hashes the files for the digest, the second finds it remembered
        for key, how in (("ours_fp16", "ours_fp16"), ("ours_fp16_again", "ours_fp16"), ("ours_fp32", "ours_fp32"),
                         ("diffusers", "diffusers")):
            res = subprocess.run([sys.executable, "-c", PROBE, how, str(root)], capture_output=True, text=True,
                                 env=env, timeout=900)
            if res.returncode != 0:
                raise RuntimeError(f"{how}: {res.stderr[-3000:]}")
            result[key] = json.loads(res.stdout.strip().splitlines()[-1])
            print(key, result[key], flush=True)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the page ----------------------------------------------------------------------------------
def write_docs(m: dict[str, Any], par: list[dict[str, Any]] | None, spd: list[dict[str, Any]] | None,
               mem: dict[str, Any] | None) -> None:
    where = f"Measured by `python benchmarks/latent_vs_diffusers.py` on {describe(m)}; torch on one thread."
    if par:
        lines = [where, "", "| model | our sampler | diffusers scheduler (trailing) | max abs error, latents "
                 "| max abs error, pixels | max abs latent |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | `{r['sampler']}` | {r['scheduler']} | {r['latent_err']:.1e} "
                  f"| {r['pixel_err']:.1e} | {r['latent_scale']:.1f} |" for r in par]
        write_block(PAGE, "latent-parity", "\n".join(lines))
    if spd:
        lines = [where, "", "| model | UNet parameters | batch | steps (DDIM, w = 7.5) | ours, images/s "
                 "| diffusers img2img, images/s | speed ratio, wall clock (range) | best / best "
                 "| speed ratio, CPU time (range) |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['unet_params'] / 1e6:.2f} M | {r['batch']} | {r['steps']} | "
                  f"{r['ours_img_s']:.2f} | {r['diffusers_img_s']:.2f} | {r['ratio']:.2f} "
                  f"({r['ratio_range'][0]:.2f} to {r['ratio_range'][1]:.2f}) | {r['ratio_best']:.2f} | "
                  f"{r['cpu_ratio']:.2f} ({r['cpu_ratio_range'][0]:.2f} to {r['cpu_ratio_range'][1]:.2f}) |"
                  for r in spd]
        lines += ["", "Ratios are ours / diffusers in images/s (above 1: ours is faster), the median over rounds "
                  "that each time both back to back. images/s are medians over the repeats. The machine was "
                  "shared (see the load average): wall-clock rounds swing with the other work; the process's CPU "
                  "time (torch on one thread) counts only the work done, and is the steadier figure."]
        write_block(PAGE, "latent-speed", "\n".join(lines))
    if mem:
        gib = 1024
        rows = [("ours, float16 files -> float16 (first load: hashes the files)", mem["ours_fp16"]),
                ("ours, float16 -> float16 again (digest remembered)", mem["ours_fp16_again"]),
                ("ours, float16 files -> float32", mem["ours_fp32"]),
                ("diffusers from_pretrained(torch_dtype=float16), no accelerate", mem["diffusers"])]
        lines = [where, "", "Checkpoint: SD-1.5-sized random weights, float16 safetensors, "
                 f"{mem['weights_mib'] / gib:.2f} GiB of weights ({rows[0][1]['params'] / 1e6:.0f} M parameters).",
                 "",
                 "| load | peak RSS above the imports | peak / weights on disk | RSS after: file-backed / anonymous "
                 "| seconds |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {r['peak_mib'] / gib:.2f} GiB | {r['peak_mib'] / mem['weights_mib']:.2f} | "
                  f"{r['rss_file_mib'] / gib:.2f} / {r['rss_anon_mib'] / gib:.2f} GiB | {r['seconds']:.1f} |"
                  for name, r in rows]
        lines += ["", f"The process's RSS after its imports (the baseline): {rows[0][1]['base_mib'] / gib:.2f} GiB. "
                  f"Hashing the files for the content digest takes {rows[0][1]['digest_seconds']:.1f} s of the first "
                  "load (sha256 of every file, page cache warm); later loads of the same folder find it remembered."]
        write_block(PAGE, "latent-memory", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-large", action="store_true", help="skip the SD-1.5-sized loading measurement")
    ap.add_argument("--only-large", action="store_true", help="only the loading measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--write-docs", action="store_true", help=f"write the results into {PAGE.relative_to(ROOT)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _quiet()
    m = machine()
    with tempfile.TemporaryDirectory(prefix="latent-bench-") as tmp:
        os.environ["SDEDIT_CACHE"] = str(Path(tmp) / "cache")  # digests of the temporary folders stay there
        par = None if args.only_large else parity(Path(tmp))
        spd = None if args.only_large else speed(Path(tmp), args.repeats)
        mem = None if args.skip_large else loading_memory(Path(tmp))
    if args.write_docs:
        write_docs(m, par, spd, mem)
    print(json.dumps({"machine": m, "parity": par, "speed": spd, "memory": mem}, indent=1, default=str))


if __name__ == "__main__":
    main()
