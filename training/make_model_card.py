"""Write the bundled score model's card: training figures, a loss curve and unconditional samples.

python training/make_model_card.py pipeline/assets/models/fashion-mnist-ddpm
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
    ax.set(xlabel="training step (batch 128)", ylabel="epsilon MSE", yscale="log", title="fashion-mnist-ddpm training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.folder / "training_loss.png", dpi=110)

    model = load_score_model(args.folder)
    start = time.perf_counter()
    gens = [torch.Generator().manual_seed(i) for i in range(args.samples)]
    # t0 = 1: the guide is multiplied by sqrt(alpha_bar) = 0.006, so this is unconditional sampling
    out = sdedit(model, torch.full((args.samples, 1, 28, 28), 0.5), t0=1.0, generator=gens)
    took = time.perf_counter() - start
    grid((out[:, 0].numpy() * 255).round().astype(np.uint8), cols=16).save(args.folder / "samples.png")

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


if __name__ == "__main__":
    main()
