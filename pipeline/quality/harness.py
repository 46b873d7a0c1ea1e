"""`sdedit eval`: the paper's faithfulness (L2 to the guide) and realism (KID) over stroke guides.

Per configuration (sampler, steps, t0, and for a class-conditional model the label mode and the
guidance weight) it runs SDEdit over simulated stroke guides made from the
Fashion-MNIST test split and reports, over the outputs:
- faithfulness: the L2 norm of (output - guide) per image, pixels in [0, 1], summed over all pixels
  as the paper does (`l2`, mean over images, with its standard error `l2_se`), and the same as a
  root mean square per pixel (`rms` = l2 / sqrt(C H W));
- realism: KID against real test images (classifier features; `kid`, `kid_se`: the full-set
  estimate and its jackknife standard error; `kid_subset_mean`/`kid_subset_std`: the usual subset
  protocol, see `kid.py`);
- `class_kept`: how often the classifier puts the output in the class of the image the guide was
  made from; `l2_source`: L2 to that image;
- cost: model calls per output (`calls`, from the kernel's `model_calls`; `calls_counted`, network
  forwards actually seen per output) and wall time.

Reference rows: the guides themselves, real test images (a set disjoint from the guides' sources
and from the KID reference; their L2 is to the guide of the same row, i.e. a random pairing) and
unconditional samples (t0 = 1.0, ancestral, where the start is essentially pure noise; a
class-conditional model's with its null label). A class-conditional model adds "conditional
samples" per guidance weight: t0 = 1.0 with each guide's source class as label, so their
`class_kept` is the fraction of class-conditional samples the classifier puts in their class.

Labels (`--label`): `none` runs every item unlabelled (an unconditional model as it is, a
conditional one with its null label: the unconditional model it learned); `source` gives each
guide the class of the test image it was painted from. Guidance (`--guidance`, w) acts on labelled
items only: a `none` row always has w = 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import sdedit_kernel as sk
from pipeline.builtin import resolve_model_uri

from .dataset import CLASSES, load_split
from .features import extract_features, load_classifier, to_tensor
from .kid import kid
from .strokes import DEFAULT_BLUR, DEFAULT_BLUR_SIZE, DEFAULT_LEVELS, make_stroke_guides, pick_indices
from .tables import COLUMNS, markdown_table, write_table

__all__ = ["COLUMNS", "LABEL_MODES", "EvalConfig", "EvalSet", "Evaluator", "build_eval_set", "l2_per_image",
           "load_model", "main", "markdown_table", "steps_for_calls", "write_table"]

DEFAULT_MODEL = "fashion-mnist-ddpm"  # a bundled model's name, or any checkpoint folder or URI
LABEL_MODES = ("none", "source")  # unlabelled (null label) / the class of the guide's source image


@dataclass(frozen=True)
class EvalConfig:
    """One SDEdit configuration; `steps=None` is the sampler's default (for ancestral: t0 * 1000).

    label: "none" (unlabelled: the null label of a conditional model) or "source" (each guide's source
    class); guidance: the classifier-free guidance weight w (1 = the conditional model, no guidance).
    """

    sampler: str
    t0: float
    steps: int | None = None
    options: tuple[tuple[str, float], ...] = ()
    label: str = "none"
    guidance: float = 1.0


@dataclass
class EvalSet:
    """Guides, the images they came from, a disjoint real set, and KID reference features."""

    ids: list[str]
    sources: torch.Tensor  # [n, 1, 28, 28] in [0, 1]
    labels: np.ndarray
    guides: torch.Tensor
    real: torch.Tensor  # [n, 1, 28, 28], disjoint from sources and from the KID reference
    reference: torch.Tensor  # [kid_ref, 1, 28, 28]
    settings: dict = field(default_factory=dict)


def build_eval_set(n: int, kid_ref: int, *, seed: int = 0, blur: str = DEFAULT_BLUR,
                   blur_size: int = DEFAULT_BLUR_SIZE, levels: int = DEFAULT_LEVELS,
                   images: np.ndarray | None = None, labels: np.ndarray | None = None) -> EvalSet:
    """Three disjoint random draws from the test split (or `images`): guide sources, real, KID reference."""
    if images is None:
        images, labels = load_split("test")
    src_idx, real_idx, ref_idx = pick_indices(len(images), [n, n, kid_ref], seed)
    sources = to_tensor(images[src_idx])
    return EvalSet(
        ids=[f"test-{i}" for i in src_idx], sources=sources,
        labels=np.asarray(labels)[src_idx] if labels is not None else np.full(n, -1),
        guides=make_stroke_guides(sources, blur=blur, blur_size=blur_size, levels=levels),
        real=to_tensor(images[real_idx]), reference=to_tensor(images[ref_idx]),
        settings={"n": n, "kid_ref": kid_ref, "seed": seed, "blur": blur, "blur_size": blur_size,
                  "levels": levels, "data": "Fashion-MNIST test split"},
    )


def l2_per_image(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The paper's L2: the Euclidean norm of the difference over all pixels, pixels in [0, 1]."""
    return (a.float() - b.float()).flatten(1).norm(dim=1).double().numpy()


class Evaluator:
    """Runs configurations over one EvalSet and scores them; results are cached per configuration."""

    def __init__(self, model, eval_set: EvalSet, classifier=None, *, seed: int = 0, batch_size: int = 128,
                 kid_subsets: int = 100, log=print) -> None:
        self.model = model
        self.data = eval_set
        self.classifier = classifier if classifier is not None else load_classifier()
        self.seed = seed
        self.batch_size = batch_size
        self.kid_subsets = kid_subsets
        self.log = log
        self.ref_features = extract_features(self.classifier, eval_set.reference)
        self.outputs: dict[EvalConfig, torch.Tensor] = {}
        self.rows: dict[EvalConfig, dict] = {}

    def score(self, images: torch.Tensor) -> dict:
        """Faithfulness and realism of `images` (aligned with the guides), no cost columns."""
        d = self.data
        l2 = l2_per_image(images, d.guides)
        feats = extract_features(self.classifier, images)
        k = kid(feats, self.ref_features, subsets=self.kid_subsets, seed=self.seed)
        with torch.inference_mode():
            pred = self.classifier(images.float()).argmax(1).numpy()
        return {
            "l2": float(l2.mean()), "l2_se": float(l2.std(ddof=1) / np.sqrt(len(l2))) if len(l2) > 1 else 0.0,
            "rms": float((l2 / np.sqrt(images[0].numel())).mean()),
            "kid": k.value, "kid_se": k.stderr,
            "kid_subset_mean": k.subset_mean, "kid_subset_std": k.subset_std,
            "class_kept": float((pred == d.labels).mean()),
            "l2_source": float(l2_per_image(images, d.sources).mean()), "n": len(images),
        }

    def run(self, cfg: EvalConfig) -> dict:
        """SDEdit over every guide with `cfg`, scored; cached, so a shared configuration runs once."""
        try:
            key = self._resolve(cfg)
        except Exception as e:
            self.log(f"  {cfg}: FAILED {type(e).__name__}: {e}")
            return {"name": f"sdedit {cfg.sampler}", "sampler": cfg.sampler, "t0": cfg.t0, "label": cfg.label,
                    "guidance": cfg.guidance, "steps": cfg.steps, "error": f"{type(e).__name__}: {e}"}
        if key in self.rows:
            return self.rows[key]
        row = {"name": f"sdedit {key.sampler}", "sampler": key.sampler, "t0": key.t0, "label": key.label,
               "guidance": key.guidance, "steps": key.steps}
        try:
            opts = dict(key.options)
            row["calls"] = sk.model_calls(key.sampler, key.steps, **opts)
            outputs, counted, wall = self._generate(key, opts)
        except Exception as e:  # one failing configuration must not lose the others
            self.log(f"  {key}: FAILED {type(e).__name__}: {e}")
            row["error"] = f"{type(e).__name__}: {e}"
            self.rows[key] = row
            return row
        row.update(self.score(outputs))
        row.update(calls_counted=counted / len(outputs), wall_s=round(wall, 2),
                   ms_per_output=round(1000 * wall / len(outputs), 2))
        self.outputs[key] = outputs
        self.rows[key] = row
        self.log(f"  {key.sampler} t0={key.t0} label={key.label} w={key.guidance:g} steps={key.steps} "
                 f"calls={row['calls']}: L2 {row['l2']:.3f} KID {row['kid']:.4f}+-{row['kid_se']:.4f} "
                 f"class kept {row['class_kept']:.0%} ({wall:.1f} s)")
        return row

    def _resolve(self, cfg: EvalConfig) -> EvalConfig:
        """The configuration as it runs: steps resolved, guidance 1 for unlabelled rows; a clear error
        for a label mode the model or the data cannot serve."""
        steps = sk.resolve_steps(self.model, cfg.t0, cfg.steps, cfg.sampler)
        guidance = float(cfg.guidance)
        if cfg.label not in LABEL_MODES:
            raise ValueError(f"label mode {cfg.label!r}: use one of {', '.join(LABEL_MODES)}")
        if not np.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be finite and >= 0, got {cfg.guidance!r}")
        if cfg.label == "source":
            self._check_source_labels()
        elif guidance != 1.0:  # guidance acts on labelled items only: the row is the w = 1 row
            guidance = 1.0
        return EvalConfig(cfg.sampler, float(cfg.t0), steps, tuple(sorted(cfg.options)), cfg.label, guidance)

    def _check_source_labels(self) -> None:
        """`--label source` needs a class-conditional model whose labels are Fashion-MNIST's classes."""
        m = self.model
        if m.num_classes is None:
            raise ValueError(f"--label source needs a class-conditional model; {m.source or 'this model'} is "
                             "unconditional (no num_class_embeds in its config.json)")
        if (self.data.labels < 0).any():
            raise ValueError("--label source needs the class of every guide's source image, and this set has none")
        names = m.label_names
        if names is not None and tuple(names[: len(CLASSES)]) != CLASSES:
            raise ValueError(f"the model's classes {list(names)} are not Fashion-MNIST's {list(CLASSES)} in "
                             "that order: its labels would not mean the guides' classes")
        top = int(self.data.labels.max())
        if names is None and top >= m.num_classes:
            raise ValueError(f"the guides' classes go up to {top}, the model takes labels 0 .. {m.num_classes - 1}")

    def _generate(self, cfg: EvalConfig, opts: dict) -> tuple[torch.Tensor, int, float]:
        counter = [0]

        def count(module, args, output):  # network forwards, in images, whatever the batching
            counter[0] += len(args[0])

        hook = self.model.net.register_forward_hook(count)
        outs = []
        start = time.perf_counter()
        try:
            for i in range(0, len(self.data.guides), self.batch_size):
                ids = self.data.ids[i : i + self.batch_size]
                gens = [sk.generator_for(self.seed, item, 0) for item in ids]
                labels = (torch.as_tensor(self.data.labels[i : i + self.batch_size], dtype=torch.long)
                          if cfg.label == "source" else None)
                outs.append(sk.sdedit(self.model, self.data.guides[i : i + self.batch_size], t0=cfg.t0,
                                      steps=cfg.steps, sampler=cfg.sampler, generator=gens, labels=labels,
                                      guidance_scale=cfg.guidance, **opts).cpu())
        finally:
            hook.remove()
        return torch.cat(outs), counter[0], time.perf_counter() - start

    def reference_rows(self, uncond_steps: int | None = None, *, guidance: tuple[float, ...] = (1.0,),
                       sampler: str = "ancestral") -> list[dict]:
        """Guides, real test images, unconditional samples (t0 = 1.0, `sampler`; the null label of a
        conditional model) and, for a conditional model, conditional samples (label = each guide's
        source class) at each guidance weight: their class_kept is the fraction judged their class."""
        d = self.data
        guides = {"name": "reference: stroke guides", "calls": 0, **self.score(d.guides)}
        real = {"name": "reference: real test images", "calls": 0, **self.score(d.real)}
        conditional = self.model.num_classes is not None
        uncond = dict(self.run(EvalConfig(sampler, 1.0, uncond_steps)))
        uncond["name"] = "reference: unconditional samples" + (" (null label)" if conditional else "")
        rows = [guides, real, uncond]
        for w in dict.fromkeys(float(g) for g in guidance) if conditional else ():
            row = dict(self.run(EvalConfig(sampler, 1.0, uncond_steps, label="source", guidance=w)))
            rows.append({**row, "name": f"reference: conditional samples (w={w:g})"})
        return rows


def load_model(uri: str, device: str = "cpu"):
    """A score model by bundled name (`fashion-mnist-ddpm`) or checkpoint folder/URI."""
    return sk.load_score_model(resolve_model_uri(uri), device=device)


def steps_for_calls(sampler: str, calls: int, **options) -> int:
    """The most reverse steps whose model calls per output fit in `calls` (at least one step)."""
    per_step = sk.model_calls(sampler, 1, **options)
    return max(1, calls // per_step)


def _parse_options(items: list[str]) -> tuple[tuple[str, float], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option takes key=value, got {item!r}")
        out.append((key, int(value) if value.lstrip("-").isdigit() else float(value)))
    return tuple(sorted(out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdedit eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled model name, or checkpoint folder or URI")
    p.add_argument("--classifier", default=None, help="feature classifier folder (default: bundled)")
    p.add_argument("--sampler", nargs="+", default=["ancestral"])
    p.add_argument("--t0", nargs="+", type=float, default=[0.5])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", nargs="+", type=int, default=None, help="reverse steps (default: sampler's)")
    g.add_argument("--calls", nargs="+", type=int, default=None, help="model-call budgets per output")
    p.add_argument("--option", nargs="*", default=[], help="sampler options key=value, e.g. eta=0.5")
    p.add_argument("--label", nargs="+", choices=LABEL_MODES, default=["none"],
                   help="none: unlabelled (a conditional model's null label); source: each guide's source class")
    p.add_argument("--guidance", nargs="+", type=float, default=[1.0],
                   help="classifier-free guidance weights w (1 = none); each one a row with --label source")
    p.add_argument("--n", type=int, default=200, help="number of stroke guides (default 200)")
    p.add_argument("--kid-ref", type=int, default=2000, help="real test images in the KID reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blur", default=DEFAULT_BLUR, choices=["gaussian", "median"])
    p.add_argument("--blur-size", type=int, default=DEFAULT_BLUR_SIZE)
    p.add_argument("--levels", type=int, default=DEFAULT_LEVELS)
    p.add_argument("--no-references", action="store_true", help="skip the reference rows")
    p.add_argument("--uncond-steps", type=int, default=None,
                   help="steps of the unconditional row (default: ancestral's, 1000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="small smoke run: --n 32 --kid-ref 500, unconditional row with 100 steps")
    p.add_argument("--out", type=Path, default=Path("out/eval"))
    p.add_argument("--name", default="eval")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.kid_ref = min(args.n, 32), min(args.kid_ref, 500)
        args.uncond_steps = args.uncond_steps or 100
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load_model(args.model, args.device)
    data = build_eval_set(args.n, args.kid_ref, seed=args.seed, blur=args.blur, blur_size=args.blur_size,
                          levels=args.levels)
    ev = Evaluator(model, data, load_classifier(args.classifier), seed=args.seed, batch_size=args.batch_size)
    options = _parse_options(args.option)
    rows = [] if args.no_references else ev.reference_rows(args.uncond_steps, guidance=tuple(args.guidance))
    budgets = args.calls if args.calls else [None]
    seen: set[int] = set()  # a `none` row ignores w: the product repeats it, the table lists it once
    for sampler, t0, steps, calls, label, w in itertools.product(args.sampler, args.t0, args.steps or [None],
                                                                 budgets, args.label, args.guidance):
        if calls is not None:
            steps = steps_for_calls(sampler, calls, **dict(options))
        row = ev.run(EvalConfig(sampler, t0, steps, options, label, w))
        if id(row) not in seen:
            seen.add(id(row))
            rows.append(row)
    settings = {**data.settings, "model": args.model, "model_digest": model.digest,
                "model_classes": model.num_classes, "null_label": model.null_label,
                "wall_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
                "torch": torch.__version__}
    csv_path, md_path = write_table(rows, args.out, args.name, title=f"# sdedit eval: {args.name}",
                                    notes="Settings: `" + json.dumps(settings) + "`")
    record = {"settings": settings, "rows": rows}
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
