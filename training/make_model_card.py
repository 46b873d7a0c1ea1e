"""Write a bundled score model's card: training figures, a loss curve and samples.

python training/make_model_card.py pipeline/assets/models/fashion-mnist-ddpm
python training/make_model_card.py pipeline/assets/models/fashion-mnist-cond --sampler dpmpp_2m_sde --steps 50 \
    --guidance 3 --quality docs/conditional_quality_card.md

A class-conditional model (labels.json next to its config) gets one row of samples per class at
--guidance, and a row from the null label (the unconditional model); --quality inserts a Markdown
file of measured figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdedit_kernel import load_score_model, sdedit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_score_model import ARCH, SCHEDULE  # noqa: E402


def grid(images: np.ndarray, cols: int, scale: int = 3) -> Image.Image:
    n, h, w = images.shape
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = im
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sampler", default="ancestral", help="sampler for the samples (default: the official one)")
    p.add_argument("--steps", type=int, default=None, help="its steps from t0 = 1 (default: the sampler's own)")
    p.add_argument("--guidance", type=float, default=1.0, help="class-conditional models: guidance of the samples")
    p.add_argument("--quality", type=Path, default=None, help="a Markdown file of measured figures to insert")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    meta = json.loads((args.folder / "training.json").read_text())
    log = [json.loads(line) for line in (args.folder / "train_log.jsonl").read_text().splitlines()]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=0.6, alpha=0.5, label="batch loss")
    ax.plot([r["step"] for r in log], [r["loss_avg"] for r in log], lw=1.5, label="running mean")
    ax.set(xlabel=f"training step (batch {meta['batch_size']})", ylabel="epsilon MSE", yscale="log",
           title=f"{args.folder.name} training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.folder / "training_loss.png", dpi=110)

    model = load_score_model(args.folder)
    start = time.perf_counter()
    conditional = model.classes is not None
    per_row = 16
    labels = None
    if conditional:  # one row per class, then the null label's row (None: unlabelled)
        classes = [c for c in range(model.num_classes) if c != model.null_label]
        per_row = max(1, args.samples // (len(classes) + 1))
        labels = [c for c in classes for _ in range(per_row)] + [None] * per_row
    n = len(labels) if labels is not None else args.samples
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    # t0 = 1: the guide is multiplied by sqrt(alpha_bar) = 0.006, so this is unconditional sampling
    extra = {"labels": labels, "guidance_scale": args.guidance} if conditional else {}
    out = sdedit(model, torch.full((n, 1, 28, 28), 0.5), t0=1.0, generator=gens, sampler=args.sampler,
                 steps=args.steps, **extra)
    took = time.perf_counter() - start
    grid((out[:, 0].numpy() * 255).round().astype(np.uint8), cols=per_row).save(args.folder / "samples.png")
    if conditional:
        print(_conditional_card(args, meta, model, took, per_row))
        return

    arch = ", ".join(f"{k}={v}" for k, v in ARCH.items())
    stop = "" if meta["steps_done"] == meta["steps_planned"] else f" --stop-after {meta['steps_done']}"
    epochs = meta["steps_done"] * meta["batch_size"] / 60000
    card = f"""# fashion-mnist-ddpm

The bundled score model: a small VP (DDPM) epsilon-prediction model, in diffusers' UNet2DModel
format (flat layout), so it loads through `sdedit_kernel.load_score_model` exactly as users' own
checkpoints do. Job files name it `model.uri: fashion-mnist-ddpm`.

- **Data**: {meta["data"]} (Debian's `dataset-fashion-mnist`), 28x28, one channel, pixels scaled to [-1, 1].
  The test split is never used in training.
- **Architecture**: diffusers `UNet2DModel({arch})`; {meta["params"]:,} parameters.
- **Schedule**: the official DDPM/SDEdit one: {SCHEDULE["num_train_timesteps"]} steps, linear betas
  {SCHEDULE["beta_start"]} to {SCHEDULE["beta_end"]}, epsilon prediction, fixed-small variance, no clipping.
- **Training**: `python training/train_score_model.py --out pipeline/assets/models/fashion-mnist-ddpm
  --threads {meta["threads"]} --steps {meta["steps_planned"]}{stop}`:
  AdamW, lr {meta["lr"]} (warm-up {meta["warmup"]} steps, cosine to 10%), batch {meta["batch_size"]},
  gradient clipping 1.0, EMA {meta["ema"]} (the EMA weights are shipped), seed {meta["seed"]}.
  {meta["steps_done"]} steps of a planned {meta["steps_planned"]} ({epochs:.1f} epochs),
  **{meta["elapsed_s"] / 60:.0f} minutes** on {meta["threads"]} CPU thread(s) of this project's 2-core machine
  (shared with the rest of the development work), torch {meta["torch"]}. No GPU.
- **Final loss** (running mean of the epsilon MSE): **{meta["final_loss_avg"]:.4f}**.
- **Reproducible** from the command above: same seed, same thread count, same data order.

![training loss](training_loss.png)

Unconditional samples ({args.samples}, the official ancestral sampler from t0 = 1, 1000 model calls each,
{took:.0f} s on {platform.machine()} with {args.threads} threads):

![samples](samples.png)

Quality figures (faithfulness and realism under SDEdit) are in `docs/quality.md`.
"""
    (args.folder / "MODEL_CARD.md").write_text(card)
    print(card)


def _conditional_card(args: argparse.Namespace, meta: dict, model: object, took: float, per_row: int) -> str:
    names = ", ".join(f"{i} {name}" for i, name in enumerate(model.label_names or []))
    stop = "" if meta["steps_done"] == meta["steps_planned"] else f" --stop-after {meta['steps_done']}"
    epochs = meta["steps_done"] * meta["batch_size"] / 60000
    quality = args.quality.read_text() if args.quality else "Quality figures: docs/conditional_quality.md.\n"
    card = f"""# {args.folder.name}

The bundled class-conditional score model: the same small VP (DDPM) epsilon-prediction UNet as
`fashion-mnist-ddpm`, with a class embedding (`num_class_embeds` = {model.num_classes}), in diffusers'
UNet2DModel format, plus `labels.json` (class names and the null label). Job files name it
`model.uri: {args.folder.name}`; manifests give each row's `label` by index or name.

- **Labels**: {names}; **null label {model.null_label}** (no class: the unconditional model, used by
  classifier-free guidance and by unlabelled rows).
- **Data**: {meta["data"]} (Debian's `dataset-fashion-mnist`), 28x28, one channel, pixels in [-1, 1];
  each image's label replaced by the null label with probability {meta["label_dropout"]} (label dropout, as
  DiT and classifier-free guidance train). The test split is never used in training.
- **Architecture**: diffusers `UNet2DModel` as fashion-mnist-ddpm plus `num_class_embeds={model.num_classes}`;
  {meta["params"]:,} parameters.
- **Schedule**: {SCHEDULE["num_train_timesteps"]} steps, linear betas {SCHEDULE["beta_start"]} to
  {SCHEDULE["beta_end"]}, epsilon prediction, fixed-small variance, no clipping.
- **Training**: `python training/train_score_model.py --out pipeline/assets/models/{args.folder.name}
  --num-classes {meta["num_classes"]} --label-dropout {meta["label_dropout"]} --threads {meta["threads"]}
  --steps {meta["steps_planned"]} --batch-size {meta["batch_size"]}{stop}`: AdamW, lr {meta["lr"]} (warm-up
  {meta["warmup"]} steps, cosine to 10%), gradient clipping 1.0, EMA {meta["ema"]} (the EMA weights are
  shipped), seed {meta["seed"]}. {meta["steps_done"]} steps of a planned {meta["steps_planned"]}
  ({epochs:.1f} epochs), **{meta["elapsed_s"] / 60:.0f} minutes** on {meta["threads"]} CPU thread(s) of this
  project's 2-core machine (shared with the rest of the development work), torch {meta["torch"]}. No GPU.
- **Final loss** (running mean of the epsilon MSE): **{meta["final_loss_avg"]:.4f}**.
- **Reproducible** from the command above: same seed, same thread count, same data order.

![training loss](training_loss.png)

Samples from t0 = 1 ({args.sampler}, {args.steps or "default"} steps, guidance {args.guidance:g}, {took:.0f} s on
{platform.machine()} with {args.threads} threads): one row per class ({per_row} seeds each), the last row
from the null label:

![samples](samples.png)

{quality}"""
    (args.folder / "MODEL_CARD.md").write_text(card)
    return card


if __name__ == "__main__":
    main()
