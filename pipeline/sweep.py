"""t0 sweeps, seen: a sheet of a few items' outputs across t0, and a plot of faithfulness per t0.

SDEdit's one real knob is t0: small stays faithful to the guide, large is realistic. A sweep
(``sampling.t0: [0.3, 0.5, 0.7]``) runs every item at every value; these two pictures are how a user
reads it. Like the contact sheet they are drawn only from what the run wrote (index, images,
job.json), so ``sdedit sheet OUT`` and ``sdedit inspect OUT`` can draw them again later.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from pipeline.index import read_index
from pipeline.naming import OutputLayout, canonical_t0, t0_label
from pipeline.outdir import SWEEP_PLOT_FILE, SWEEP_SHEET_FILE, read_job_record
from pipeline.sheet import (
    HEADER_H,
    LABEL_W,
    TILE,
    TILE_COLUMNS,
    draw_label,
    input_tiles,
    note_tile,
    output_tile,
    working_size,
)
from pipeline.storage import join_uri, url_to_fs, write_atomic

MAX_T0_COLUMNS = 12
PLOT_SIZE_IN, PLOT_DPI = (6.4, 4.0), 100  # 640 x 400 pixels


def faithfulness_by_t0(table: pa.Table) -> dict[float, list[float]]:
    """Faithfulness L2 of the ok outputs, grouped by canonical t0 (sorted): the plot's and inspect's data."""
    groups: dict[float, list[float]] = {}
    for t0, status, l2 in zip(table.column("t0").to_pylist(), table.column("status").to_pylist(),
                              table.column("faithfulness_l2").to_pylist(), strict=True):
        if status == "ok" and t0 is not None and l2 is not None:
            groups.setdefault(canonical_t0(t0), []).append(float(l2))
    return dict(sorted(groups.items()))


def write_sweep_views(out_uri: str, *, out_options: Mapping[str, Any] | None = None,
                      input_options: Mapping[str, Any] | None = None, items: int = 6) -> list[str]:
    """Draw the sweep sheet and the faithfulness plot when the index holds several t0 values.

    Returns the URIs written (none for a single-t0 run). A single-t0 job whose items override t0
    in the manifest also has several t0 values; it gets the pictures too, which is what a user
    comparing those t0s wants.
    """
    table = read_index(out_uri, out_options, columns=["t0"])
    if len({canonical_t0(t) for t in table.column("t0").to_pylist() if t is not None}) < 2:
        return []
    return [make_sweep_sheet(out_uri, out_options=out_options, input_options=input_options, items=items),
            make_sweep_plot(out_uri, out_options=out_options)]


def make_sweep_sheet(out_uri: str, *, out_options: Mapping[str, Any] | None = None,
                     input_options: Mapping[str, Any] | None = None, items: int = 6) -> str:
    """``OUT/sweep_sheet.png``: rows = up to ``items`` items, columns = guide, mask, output at each t0.

    Each item shows its lowest sample index, so a row differs only by t0 (every t0 of a sweep uses
    the same seed). Items run at the most t0 values are chosen first, and an item run at a single
    t0 (its manifest row sets its own) only when no item has two: a row of one output says nothing
    about t0. The columns are the t0 values of the chosen rows.
    """
    job = read_job_record(out_uri, out_options)
    working, layout = working_size(job), OutputLayout.of_job(job["spec"])
    table = read_index(out_uri, out_options, columns=["id", "sample", "t0", "status", *TILE_COLUMNS],
                       max_files=8)
    by_id: dict[str, dict[float, dict[str, Any]]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["sample"]):
        if row["t0"] is not None:
            by_id.setdefault(row["id"], {}).setdefault(canonical_t0(row["t0"]), row)
    ranked = sorted(by_id, key=lambda i: (-len(by_id[i]), i))
    swept = [i for i in ranked if len(by_id[i]) > 1]
    chosen = sorted((swept or ranked)[:max(1, items)])
    t0s = sorted({t0 for i in chosen for t0 in by_id[i]})[:MAX_T0_COLUMNS]
    with_mask = any(row["mask"] or row["built_mask"] for i in chosen for row in by_id[i].values())
    titles = ["guide", *(["mask (white = edit)"] if with_mask else []), *[f"t0 = {t0_label(t)}" for t in t0s]]
    sheet = Image.new("RGB", (LABEL_W + TILE * len(titles), HEADER_H + TILE * len(chosen)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for c, title in enumerate(titles):
        draw.text((LABEL_W + c * TILE + 4, 4), title, fill="black", font=font)
    for r, item_id in enumerate(chosen):
        top = HEADER_H + r * TILE
        first = next(iter(by_id[item_id].values()))
        draw_label(draw, top, item_id, first.get("label_name"))
        guide, mask = input_tiles(out_uri, first, working, input_options, out_options)
        tiles = [guide, mask] if with_mask else [guide]
        for t0 in t0s:
            row = by_id[item_id].get(t0)
            tiles.append(note_tile("not run at this t0") if row is None else
                         output_tile(out_uri, row, layout, out_options))
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (LABEL_W + c * TILE, top))
    return _publish(out_uri, out_options, SWEEP_SHEET_FILE, lambda buffer: sheet.save(buffer, format="PNG"))


def make_sweep_plot(out_uri: str, *, out_options: Mapping[str, Any] | None = None) -> str:
    """``OUT/sweep_faithfulness.png``: faithfulness L2 per t0 as boxes (quartiles), mean line, n per t0."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    groups = faithfulness_by_t0(read_index(out_uri, out_options, columns=["t0", "status", "faithfulness_l2"]))
    if not groups:
        raise ValueError(f"{out_uri}: no ok output with a faithfulness value to plot")
    t0s, values = list(groups), list(groups.values())
    width = 0.5 * min([b - a for a, b in zip(t0s, t0s[1:], strict=False)] or [0.1])
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    ax = fig.subplots()
    ax.boxplot(values, positions=t0s, widths=width, manage_ticks=False, showfliers=True,
               medianprops={"color": "tab:orange"})
    means = [float(np.mean(v)) for v in values]
    sds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
    ax.errorbar(t0s, means, yerr=sds, fmt="o-", color="tab:blue", capsize=3, label="mean ± sd")
    top = max(max(v) for v in values)
    for t0, v in zip(t0s, values, strict=True):
        ax.annotate(f"n={len(v)}", (t0, max(v)), textcoords="offset points", xytext=(0, 5), ha="center",
                    fontsize=8)
    ax.set_ylim(0, top * 1.15)
    ax.set_xticks(t0s, [t0_label(t) for t in t0s])
    ax.set_xlabel("t0")
    ax.set_ylabel("faithfulness L2 (RMS per pixel, [0, 1])")
    ax.set_title("Faithfulness to the guide per t0 (box: quartiles; lower = closer)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _publish(out_uri, out_options, SWEEP_PLOT_FILE, lambda buffer: fig.savefig(buffer, format="png"))


def _publish(out_uri: str, options: Mapping[str, Any] | None, name: str, draw: Any) -> str:
    buffer = io.BytesIO()
    draw(buffer)
    fs, root = url_to_fs(out_uri, options)
    write_atomic(fs, join_uri(root, name), buffer.getvalue())
    return join_uri(out_uri, name)
