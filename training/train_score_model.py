"""Train the bundled VP score model (diffusers UNet2DModel, epsilon prediction) on Fashion-MNIST.

Usage: python training/train_score_model.py --out pipeline/assets/models/fashion-mnist-ddpm
       python training/train_score_model.py --out pipeline/assets/models/fashion-mnist-cond --num-classes 10

With --num-classes the UNet is class-conditional (diffusers `num_class_embeds` = classes + 1): the
extra last index is the null label, learned by replacing each label with it at --label-dropout
probability, so the model also serves classifier-free guidance. `labels.json` names the classes.

Reproducible from --seed (same thread count); logs loss and time to OUT/train_log.jsonl, and saves
an EMA checkpoint every --save-every steps, so a run cut short still leaves a usable model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import load_split  # noqa: E402

ARCH = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
)
SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
    prediction_type="epsilon", variance_type="fixed_small", clip_sample=False,
)


def save(model, out: Path, meta: dict, num_classes: int = 0) -> None:
    from diffusers import DDPMScheduler

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    DDPMScheduler(**SCHEDULE).save_config(out)
    if num_classes:
        from fashion_mnist import CLASS_NAMES

        labels = {"names": list(CLASS_NAMES[:num_classes]), "null_label": num_classes}
        (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    from diffusers import UNet2DModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--num-classes", type=int, default=0, help="class-conditional with this many classes")
    p.add_argument("--label-dropout", type=float, default=0.15, help="probability of the null label")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps, keeping the schedule planned for --steps")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images, labels = load_split("train")
    labels = torch.from_numpy(labels.astype("int64"))
    data = torch.from_numpy(images.copy()).float().div(127.5).sub(1.0).unsqueeze(1)  # [-1, 1]

    arch = dict(ARCH, num_class_embeds=args.num_classes + 1) if args.num_classes else ARCH
    model = UNet2DModel(**arch)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    betas = torch.linspace(SCHEDULE["beta_start"], SCHEDULE["beta_end"], 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float()

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "train_log.jsonl", "w")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params/1e6:.3f} M, {len(data)} training images", flush=True)
    start = time.time()
    perm = torch.randperm(len(data), generator=gen)
    cursor, running = 0, None
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(last):
        if cursor + args.batch_size > len(perm):
            perm, cursor = torch.randperm(len(data), generator=gen), 0
        rows = perm[cursor : cursor + args.batch_size]
        x0 = data[rows]
        cursor += args.batch_size
        flip = torch.rand(len(x0), generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, 1000, (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = alpha_bar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        if args.num_classes:
            drop = torch.rand(len(x0), generator=gen) < args.label_dropout
            y = torch.where(drop, torch.full_like(labels[rows], args.num_classes), labels[rows])
            pred = model(xt, t, class_labels=y).sample
        else:
            pred = model(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred, eps)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0 or step == last - 1:
            rec = {"step": step, "loss": loss.item(), "loss_avg": running, "lr": lr_at(step),
                   "elapsed_s": round(time.time() - start, 1)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
        if (step + 1) % args.save_every == 0 or step == last - 1:
            save(ema, args.out, {
                "steps_done": step + 1, "steps_planned": args.steps, "batch_size": args.batch_size,
                "lr": args.lr, "warmup": args.warmup, "ema": args.ema, "seed": args.seed,
                "threads": args.threads, "params": n_params, "final_loss_avg": running,
                "elapsed_s": round(time.time() - start, 1), "torch": torch.__version__,
                "data": "Fashion-MNIST training split (60,000 images), random horizontal flips",
                "num_classes": args.num_classes,
                "label_dropout": args.label_dropout if args.num_classes else None,
            }, args.num_classes)


if __name__ == "__main__":
    main()
