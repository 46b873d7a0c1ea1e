"""Train the realism feature extractor (a small CNN) on the Fashion-MNIST training split.

Usage: python training/train_classifier.py --out pipeline/assets/models/fashion-mnist-classifier

Only the training split is used for fitting; the test split is used once, at the end, for the
accuracy written into the card. Reproducible from --seed at a fixed --threads (the default, 1, keeps
the bundled score model's training, if one runs beside it, from starving). Logs loss and time to
OUT/train_log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))
from fashion_mnist import CLASS_NAMES, load_split  # noqa: E402

from pipeline.quality.features import FashionClassifier, load_classifier, save_classifier  # noqa: E402


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return (pred == y).float().mean().item()


def write_card(out: Path, meta: dict) -> None:
    size_kb = (out / "model.safetensors").stat().st_size / 1024
    per_class = "\n".join(f"| {name} | {acc:.2%} |" for name, acc in meta["test_accuracy_per_class"].items())
    card = f"""# fashion-mnist-classifier

The realism feature extractor for this project's quality measurement (`pipeline/quality/`):
KID is computed on the {meta['feature_dim']}-dimensional penultimate layer (`FashionClassifier.features`)
of this classifier, the usual practice for MNIST-like data where Inception features do not fit.
The features are standardised per dimension with the training split's mean and std (buffers
`feature_mean`, `feature_std` in the weights file) so that the cubic kernel sees numbers of order one.

- **Data**: Fashion-MNIST training split only (60,000 images, Debian's `dataset-fashion-mnist`),
  random horizontal flips. The test split (10,000 images) was used once, for the accuracy below.
- **Architecture**: `pipeline.quality.features.FashionClassifier`: three 3x3 conv blocks
  (channels {meta['channels']}, batch norm, ReLU, two 2x2 max-pools), a linear layer to
  {meta['feature_dim']} features (ReLU), dropout {meta['dropout']}, a linear head to 10 classes;
  {meta['params']:,} parameters, `model.safetensors` {size_kb:.0f} KiB.
  Input: `[B, 1, 28, 28]`, pixels in [0, 1].
- **Training**: AdamW lr {meta['lr']} (one-cycle cosine), weight decay {meta['weight_decay']},
  batch {meta['batch_size']}, {meta['epochs']} epochs ({meta['steps']} steps), seed {meta['seed']},
  {meta['threads']} CPU thread(s), {meta['elapsed_s']:.0f} s wall time{meta['note']},
  final training loss (running mean) {meta['final_loss_avg']:.4f}. torch {meta['torch']}.
- **Test-split accuracy: {meta['test_accuracy']:.2%}** (10,000 images).

| class | test accuracy |
|---|---|
{per_class}

Reproduce: `python training/train_classifier.py --out pipeline/assets/models/fashion-mnist-classifier`
(same seed and thread count give the same weights; checked once, bitwise).
Load: `pipeline.quality.features.load_classifier()`.
"""
    (out / "CARD.md").write_text(card)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args, log) -> dict:
    """Fit `model` in place; one seeded generator draws the batch order and the flips."""
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = len(x) // args.batch_size
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    start, running, step = time.time(), None, 0
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if step % 50 == 0 or step == total - 1:
                rec = {"step": step, "epoch": epoch, "loss": round(loss.item(), 5),
                       "loss_avg": round(running, 5), "lr": sched.get_last_lr()[0],
                       "elapsed_s": round(time.time() - start, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(rec, flush=True)
            step += 1
    return {"steps": total, "final_loss_avg": running, "elapsed_s": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--where", default="", help="where it ran, for the card (e.g. 'a 2-core VM, shared')")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # weight init and dropout
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    x = torch.from_numpy(train_x.copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(train_y.astype("int64"))
    tx = torch.from_numpy(test_x.copy()).float().div(255).unsqueeze(1)
    ty = torch.from_numpy(test_y.astype("int64"))

    model = FashionClassifier()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}, {len(x)} training images", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train_log.jsonl", "w") as log:
        stats = train(model, x, y, args, log)
        acc = evaluate(model, tx, ty)
        log.write(json.dumps({"done": True, "test_accuracy": acc, **stats}) + "\n")
    model.fit_feature_stats(x)  # KID's standardisation, from the training split

    with torch.inference_mode():
        pred = torch.cat([model(tx[i : i + 1000]).argmax(1) for i in range(0, len(tx), 1000)])
    per_class = {name: (pred[ty == c] == c).float().mean().item() for c, name in enumerate(CLASS_NAMES)}
    meta = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads, "params": n_params,
        **stats, "test_accuracy": acc, "test_accuracy_per_class": per_class, "torch": torch.__version__,
        "note": f" on {args.where}" if args.where else "",
        "data": "Fashion-MNIST training split (60,000 images), random horizontal flips",
    }
    save_classifier(model, args.out, {k: meta[k] for k in (
        "test_accuracy", "epochs", "steps", "seed", "threads", "elapsed_s", "final_loss_avg", "data")})
    # the card states the accuracy of the weights as reloaded from disk, not of the object in memory
    reloaded = evaluate(load_classifier(args.out), tx, ty)
    if abs(reloaded - acc) > 1e-9:
        raise RuntimeError(f"reloaded accuracy {reloaded} != trained accuracy {acc}")
    write_card(args.out, {**meta, **model.config})
    print(f"test accuracy {acc:.4f}; {stats['elapsed_s']:.0f} s; saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
