"""Two quality studies of SDEdit on the bundled Fashion-MNIST model, written to docs/.

(a) t0 from 0.1 to 1.0 with the ancestral sampler: the paper's faithfulness (L2 to the guide) vs
    realism (KID) trade-off. Each t0 runs `round(t0 * S)` ancestral steps, S = --t0-steps-per-unit
    (default 100, a stride of 10 training steps; the official code takes every step, S = 1000,
    which this study also runs once, at t0 = 0.5, as a check).
(b) At t0 = 0.5: every kernel sampler at 5, 10, 25, 50 and 100 model calls per output against the
    official ancestral sampler at its full 500 calls. Each sampler's default is the fewest calls
    from which on (at that budget and every larger one tested) neither KID nor L2 is worse than the
    500-call figure by more than that figure's standard error.

Writes quality_t0.{md,csv,png}, quality_samplers.{md,csv,png}, quality_contact_sheet.png and
quality_run.json (settings, timings, machine) to --out (docs/ by default; out/quality-quick/ with
--quick, so a smoke run never overwrites the published figures).

    python benchmarks/quality_studies.py              # full: --n 200 guides
    python benchmarks/quality_studies.py --quick      # smoke: --n 32 guides, --kid-ref 500
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sdedit_kernel as sk  # noqa: E402
from pipeline.quality.features import load_classifier  # noqa: E402
from pipeline.quality.harness import (  # noqa: E402
    EvalConfig,
    Evaluator,
    build_eval_set,
    load_model,
    markdown_table,
    steps_for_calls,
    write_table,
)

T0S = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BUDGETS = (5, 10, 25, 50, 100)
SHEET_T0S = (0.3, 0.5, 0.7, 1.0)


def study_t0(ev: Evaluator, refs: list[dict], steps_per_unit: int, out: Path) -> list[dict]:
    rows = []
    for t0 in T0S:
        row = ev.run(EvalConfig("ancestral", t0, max(1, round(t0 * steps_per_unit))))
        rows.append({**row, "name": f"ancestral t0={t0:g}"})
    official = ev.run(EvalConfig("ancestral", 0.5))  # every training step: the official sampler
    rows.append({**official, "name": "ancestral t0=0.5, official (every step)"})
    notes = (f"Ancestral steps per unit of t0: {steps_per_unit} (official: "
             f"{ev.model.sde.num_train_timesteps}). L2: the paper's per-image norm of (output - guide), "
             "pixels in [0, 1], mean ± standard error over guides; RMS: the same per pixel. KID: vs "
             "real test images on the classifier's standardised features, ± jackknife standard error. "
             "Real test images' L2 is to a random guide (an unrelated garment), and their class kept "
             "is at chance for the same reason.")
    write_table(refs + rows, out, "quality_t0", title="# Study (a): t0 trade-off, ancestral sampler",
                notes=notes)
    plot_t0(rows[: len(T0S)], official, refs, out / "quality_t0.png")
    return rows


def plot_t0(rows: list[dict], official: dict, refs: list[dict], path: Path) -> None:
    ok = [r for r in rows if not r.get("error")]
    t0 = [r["t0"] for r in ok]
    guides, real = refs[0], refs[1]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].errorbar(t0, [r["kid"] for r in ok], [r["kid_se"] for r in ok], marker="o", capsize=3,
                   label="SDEdit outputs")
    ax[0].axhline(guides["kid"], color="tab:red", ls="--", label="stroke guides")
    ax[0].axhline(real["kid"], color="tab:green", ls=":", label="real test images")
    ax[0].set(xlabel="t0", ylabel="KID vs real (lower = more realistic)", title="realism")
    ax[0].set_yscale("symlog", linthresh=1e-3)
    ax[1].errorbar(t0, [r["l2"] for r in ok], [r["l2_se"] for r in ok], marker="o", capsize=3,
                   label="SDEdit outputs")
    ax[1].axhline(real["l2"], color="tab:green", ls=":", label="real test image (random pairing)")
    ax[1].set(xlabel="t0", ylabel="L2 to guide (lower = more faithful)", title="faithfulness")
    for a in ax[:2]:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    ax[2].plot([r["l2"] for r in ok], [r["kid"] for r in ok], marker="o")
    for r in ok:
        ax[2].annotate(f"{r['t0']:g}", (r["l2"], r["kid"]), textcoords="offset points", xytext=(4, 4),
                       fontsize=8)
    if not official.get("error"):
        ax[2].plot([official["l2"]], [official["kid"]], "k*", ms=10, label="t0=0.5, every step")
    ax[2].plot([guides["l2"]], [guides["kid"]], "rs", label="stroke guides")
    ax[2].plot([real["l2"]], [real["kid"]], "g^", label="real test images")
    ax[2].set(xlabel="L2 to guide", ylabel="KID", title="trade-off (labels: t0)")
    ax[2].set_yscale("symlog", linthresh=1e-3)
    ax[2].legend(fontsize=8)
    ax[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_samplers(ev: Evaluator, refs: list[dict], samplers: list[str], budgets: tuple[int, ...],
                   out: Path) -> tuple[list[dict], dict]:
    ref = {**ev.run(EvalConfig("ancestral", 0.5)), "name": "ancestral, official (every step)"}
    rows = []
    for sampler in samplers:
        for budget in budgets:
            row = ev.run(EvalConfig(sampler, 0.5, steps_for_calls(sampler, budget)))
            rows.append({**row, "name": sampler, "budget": budget, **compare(row, ref)})
    choice = choose_defaults(rows, samplers, budgets)
    extra = ("budget", "dKID/SE", "dL2/SE", "within")
    table = markdown_table([*refs, ref], ()) + "\n" + markdown_table(rows, extra)
    summary = ["| sampler | default steps | model calls | KID | L2 |", "|---|---|---|---|---|"]
    for s in samplers:
        c = choice[s]
        if c is None:
            summary.append(f"| {s} | none within {max(budgets)} calls | | | |")
        else:
            summary.append(f"| {s} | {c['steps']} | {c['calls']} | {c['kid']:.4f} ± {c['kid_se']:.4f} | "
                           f"{c['l2']:.2f} ± {c['l2_se']:.2f} |")
    best = choice.get("_best")
    verdict = (f"Fewest calls: **{best['sampler']}**, {best['calls']} calls ({best['steps']} steps)"
               if best else "No sampler stays within the 500-call figure's standard error at <= "
                            f"{max(budgets)} calls.")
    text = (
        "# Study (b): samplers vs model calls at t0 = 0.5\n\n"
        f"Reference: ancestral with every step (500 calls): KID {ref.get('kid', float('nan')):.4f} ± "
        f"{ref.get('kid_se', float('nan')):.4f}, L2 {ref.get('l2', float('nan')):.2f} ± "
        f"{ref.get('l2_se', float('nan')):.2f}. `dKID/SE`, `dL2/SE`: the difference from it in units of "
        "its standard error (negative = better). `within`: neither is worse by more than one standard "
        "error. A sampler's default is the fewest calls from which on every tested budget is within.\n\n"
        + "\n".join(summary) + f"\n\n{verdict}\n\n" + table
    )
    out.mkdir(parents=True, exist_ok=True)
    write_table([*refs, ref, *rows], out, "quality_samplers")
    (out / "quality_samplers.md").write_text(text)
    plot_samplers(rows, ref, samplers, budgets, out / "quality_samplers.png")
    return rows, choice


def compare(row: dict, ref: dict) -> dict:
    if row.get("error") or ref.get("error"):
        return {"within": False}
    dk = (row["kid"] - ref["kid"]) / ref["kid_se"] if ref["kid_se"] > 0 else float("inf")
    dl = (row["l2"] - ref["l2"]) / ref["l2_se"] if ref["l2_se"] > 0 else float("inf")
    return {"dKID/SE": round(dk, 2), "dL2/SE": round(dl, 2), "within": bool(dk <= 1.0 and dl <= 1.0)}


def choose_defaults(rows: list[dict], samplers: list[str], budgets: tuple[int, ...]) -> dict:
    """Per sampler: the cheapest row from which on every larger budget is within; and the overall best."""
    choice: dict = {}
    for s in samplers:
        mine = sorted((r for r in rows if r["sampler"] == s), key=lambda r: r["budget"])
        choice[s] = None
        for i, r in enumerate(mine):
            if all(x["within"] for x in mine[i:]):
                choice[s] = r
                break
    found = [c for s, c in choice.items() if c is not None]
    choice["_best"] = min(found, key=lambda c: (c["calls"], c["kid"])) if found else None
    return choice


def plot_samplers(rows: list[dict], ref: dict, samplers: list[str], budgets: tuple[int, ...],
                  path: Path) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    for key, a, label in (("kid", ax[0], "KID vs real"), ("l2", ax[1], "L2 to guide")):
        for s in samplers:
            mine = [r for r in rows if r["sampler"] == s and not r.get("error")]
            if mine:
                a.errorbar([r["calls"] for r in mine], [r[key] for r in mine], [r[f"{key}_se"] for r in mine],
                           marker="o", capsize=2, label=s)
        if not ref.get("error"):
            a.axhspan(ref[key] - ref[f"{key}_se"], ref[key] + ref[f"{key}_se"], color="k", alpha=0.12)
            a.axhline(ref[key], color="k", ls="--", label=f"ancestral, {ref['calls']} calls (± SE)")
        a.set(xscale="log", xlabel="model calls per output", ylabel=label, title=f"{label}, t0 = 0.5")
        a.set_xticks(budgets, [str(b) for b in budgets])
        a.minorticks_off()
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def contact_sheet(ev: Evaluator, steps_per_unit: int, path: Path, columns: int = 10) -> None:
    d = ev.data
    rows = [("source image", d.sources), ("stroke guide", d.guides)]
    for t0 in SHEET_T0S:
        key = ev._resolve(EvalConfig("ancestral", t0, max(1, round(t0 * steps_per_unit))))
        if key in ev.outputs:
            rows.append((f"SDEdit t0={t0:g}", ev.outputs[key]))
    columns = min(columns, len(d.guides))
    fig, ax = plt.subplots(len(rows), columns, figsize=(1.1 * columns + 1.2, 1.1 * len(rows)))
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            a = ax[r, c]
            a.imshow(images[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                a.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("Stroke guides -> SDEdit (ancestral) outputs at several t0", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fashion-mnist-ddpm")
    p.add_argument("--n", type=int, default=200, help="stroke guides (and outputs) per configuration")
    p.add_argument("--kid-ref", type=int, default=2000, help="real test images in the KID reference")
    p.add_argument("--quick", action="store_true", help="smoke run: --n 32 --kid-ref 500, out/quality-quick")
    p.add_argument("--study", choices=["t0", "samplers", "all"], default="all")
    p.add_argument("--t0-steps-per-unit", type=int, default=100)
    p.add_argument("--samplers", nargs="+", default=None, help="default: every kernel sampler")
    p.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.kid_ref = min(args.n, 32), min(args.kid_ref, 500)
    out = args.out or (ROOT / ("out/quality-quick" if args.quick else "docs"))
    torch.set_num_threads(args.threads)
    samplers = args.samplers or list(sk.SAMPLERS)

    start = time.perf_counter()
    model = load_model(args.model)
    data = build_eval_set(args.n, args.kid_ref, seed=args.seed)
    ev = Evaluator(model, data, load_classifier(), seed=args.seed, batch_size=args.batch_size)
    refs = ev.reference_rows(uncond_steps=args.t0_steps_per_unit)
    timings = {"references_s": round(time.perf_counter() - start, 1)}
    result: dict = {}
    if args.study in ("t0", "all"):
        t = time.perf_counter()
        study_t0(ev, refs, args.t0_steps_per_unit, out)
        contact_sheet(ev, args.t0_steps_per_unit, out / "quality_contact_sheet.png")
        timings["t0_study_s"] = round(time.perf_counter() - t, 1)
    if args.study in ("samplers", "all"):
        t = time.perf_counter()
        _, choice = study_samplers(ev, refs, samplers, tuple(args.budgets), out)
        timings["samplers_study_s"] = round(time.perf_counter() - t, 1)
        result["defaults"] = {s: (c and {"steps": c["steps"], "calls": c["calls"]}) for s, c in choice.items()
                              if s != "_best"}
        result["fewest_calls"] = choice["_best"] and choice["_best"]["sampler"]
    timings["total_s"] = round(time.perf_counter() - start, 1)
    training = model.source and Path(model.source, "training.json")
    given = argv if argv is not None else sys.argv[1:]
    run = {
        "command": " ".join(["python benchmarks/quality_studies.py", *given]),
        "settings": {**data.settings, "t0_steps_per_unit": args.t0_steps_per_unit, "budgets": args.budgets,
                     "samplers": samplers, "threads": args.threads, "batch_size": args.batch_size},
        "model": {"uri": model.source, "digest": model.digest,
                  "training": json.loads(training.read_text()) if training and training.exists() else None},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "timings": timings, **result,
    }
    (out / "quality_run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps({"timings": timings, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
