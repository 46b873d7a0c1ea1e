"""The evaluation's result files: every column as CSV, a readable subset as a Markdown table."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("name", "sampler", "t0", "label", "guidance", "steps", "calls", "calls_counted", "l2", "l2_se", "rms",
           "kid", "kid_se", "kid_subset_mean", "kid_subset_std", "class_kept", "l2_source", "n", "wall_s",
           "ms_per_output", "error")


def write_table(rows: list[dict], out_dir: Path, name: str, title: str = "",
                notes: str = "") -> tuple[Path, Path]:
    """`name.csv` (every column) and `name.md` (a readable subset) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    write_csv(rows, csv_path)
    text = (f"{title}\n\n" if title else "") + markdown_table(rows) + (f"\n{notes}\n" if notes else "")
    md_path.write_text(text)
    return csv_path, md_path


def write_csv(rows: list[dict], path: Path) -> None:
    """Every column of every row: COLUMNS first, then any other key in alphabetical order."""
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, *extra])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in (*COLUMNS, *extra)})


def is_conditional(rows: list[dict]) -> bool:
    """Whether any row used a label or a guidance weight other than 1 (then the table shows both)."""
    return any(r.get("label") == "source" or r.get("guidance") not in (None, "", 1, 1.0) for r in rows)


def markdown_table(rows: list[dict], extra: tuple[str, ...] = (), conditional: bool | None = None) -> str:
    """Rows as a Markdown table; `label` and `w` columns when `conditional` (default: any row needs them)."""
    cond = is_conditional(rows) if conditional is None else conditional
    head = ["configuration", "t0", *(["label", "w"] if cond else []), "steps", "calls", "L2 (sum)", "RMS", "KID",
            "class kept", "s / 100 out", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        labelled = [str(r.get("label", "")), _fmt(r.get("guidance"), "{:g}")] if cond else []
        if r.get("error"):
            cells = [r["name"], _fmt(r.get("t0"), "{:g}"), *labelled, _fmt(r.get("steps"), "{}"), "",
                     f"failed: {r['error']}"]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
            continue
        cells = [
            r["name"], _fmt(r.get("t0"), "{:g}"), *labelled, _fmt(r.get("steps"), "{}"), _fmt(r.get("calls"), "{}"),
            f"{r['l2']:.2f} ± {r['l2_se']:.2f}", f"{r['rms']:.3f}", f"{r['kid']:.4f} ± {r['kid_se']:.4f}",
            f"{r['class_kept']:.0%}", _fmt(r.get("ms_per_output"), "{:.1f}", scale=0.1),
            *[str(r.get(k, "")) for k in extra],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    if v is None or v == "":
        return ""
    return spec.format(v * scale) if scale != 1.0 else spec.format(v)
