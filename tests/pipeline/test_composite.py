"""Compositing rows (base + overlay): the guide and edit mask built exactly, the manifest's rules, and
one end-to-end run whose index, recorded inputs and kept region are checked pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from sdedit_testing import SIZE, decode_settings  # SIZE: the tiny model's sample size

from pipeline.compose import fit_region, grow, paste_overlay, place
from pipeline.decode import decode_batch
from pipeline.jobfile import build_spec
from pipeline.manifest import missing_columns, normalize_batch, resolved
from pipeline.run import run_job

BASE = 60


def _base(w: int = SIZE, h: int = SIZE) -> Image.Image:
    return Image.fromarray(np.full((h, w), BASE, np.uint8))


def _paste(overlay: Image.Image, mask: Image.Image | None = None, *, x: float | None = 2, y: float | None = 3,
           scale: float | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    notes: list[str] = []
    guide, region = paste_overlay(_base(), overlay, mask, x=x, y=y, scale=scale, mode="L", max_pixels=10**6,
                                  notes=notes)
    return np.asarray(guide), region, notes[-1]


def test_overlay_is_placed_where_stated_and_its_alpha_respected() -> None:
    overlay = Image.new("LA", (4, 3), (200, 255))
    overlay.putpixel((0, 0), (200, 0))  # transparent corner: the base shows through
    guide, region, note = _paste(overlay, x=5, y=2)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[2:5, 5:9] = True
    expected[2, 5] = False
    assert (region == expected).all()
    assert (guide[region] == 200).all() and (guide[~region] == BASE).all()
    assert note == "composite: overlay 4x3 at (5,2) scale 1, pixels from its alpha"


def test_colour_and_palette_overlays() -> None:
    base = Image.new("RGB", (8, 8), (10, 20, 30))
    overlay = Image.new("RGBA", (2, 2), (200, 100, 50, 255))
    overlay.putpixel((1, 1), (0, 0, 0, 0))
    guide, region = paste_overlay(base, overlay, None, x=3, y=3, scale=None, mode="RGB", max_pixels=100, notes=[])
    pixels = np.asarray(guide)
    assert region.sum() == 3 and (pixels[3, 3] == [200, 100, 50]).all() and (pixels[4, 4] == [10, 20, 30]).all()
    palette = Image.new("P", (2, 1), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0  # palette index 0 is transparent
    guide, region, note = _paste(palette, x=0, y=0)
    assert region[0].tolist()[:3] == [False, True, False] and guide[0, 1] == 255 and "from its alpha" in note


def test_soft_alpha_blends_and_a_plain_overlay_pastes_its_rectangle() -> None:
    guide, region, _ = _paste(Image.new("LA", (2, 2), (160, 128)), x=0, y=0)
    assert (guide[:2, :2] == round(BASE * (1 - 128 / 255) + 160 * 128 / 255)).all() and region[:2, :2].all()
    guide, region, note = _paste(Image.new("L", (3, 3), 10), x=0, y=0)
    assert region.sum() == 9 and (guide[:3, :3] == 10).all() and "whole rectangle" in note


def test_overlay_mask_wins_over_alpha_and_is_resized_to_the_overlay() -> None:
    overlay = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    cover = np.zeros((8, 8), np.uint8)
    cover[:, 4:] = 255  # right half, at twice the overlay's size: resized nearest
    guide, region, note = _paste(overlay, Image.fromarray(cover), x=0, y=0)
    assert region[:4, 2:4].all() and not region[:4, :2].any() and region.sum() == 8
    assert (guide[:4, :2] == BASE).all() and (guide[:4, 2:4] == 255).all()
    assert "overlay_mask (the overlay's alpha ignored)" in note


@pytest.mark.parametrize("scale, size", [(2.0, 6), (0.5, 2), (1.5, 4)])
def test_scale(scale: float, size: int) -> None:
    guide, region, note = _paste(Image.new("L", (3, 3), 250), x=1, y=1, scale=scale)
    assert region.sum() == size * size and region[1:1 + size, 1:1 + size].all()
    assert f"overlay {size}x{size} at (1,1) scale {scale:g}" in note


def test_positions_fractions_and_centring() -> None:
    assert place(0.5, 28, 6) == 14 and place(0.25, 10, 2) == 2  # a fraction of the base, rounded down
    assert place(None, 28, 6) == 11  # absent: centred
    assert place(-3, 28, 6) == -3 and place(0, 28, 6) == 0 and place(5, 28, 6) == 5
    _, region, _ = _paste(Image.new("L", (4, 4), 0), x=None, y=None)
    assert region[6:10, 6:10].all() and region.sum() == 16


def test_out_of_bounds_is_clipped_or_refused() -> None:
    guide, region, note = _paste(Image.new("L", (5, 5), 0), x=-2, y=SIZE - 3)
    assert region.sum() == 3 * 3 and region[SIZE - 3:, :3].all() and note.endswith("clipped to the base")
    with pytest.raises(ValueError, match=r"bad composite: the 5x5 overlay at \(16,0\) lies outside the 16x16 base"):
        _paste(Image.new("L", (5, 5), 0), x=SIZE, y=0)
    with pytest.raises(ValueError, match="bad composite: the overlay pastes no pixel"):
        _paste(Image.new("LA", (5, 5), (0, 0)))
    with pytest.raises(ValueError, match="over input.max_pixels"):
        paste_overlay(_base(), Image.new("L", (50, 50)), None, x=0, y=0, scale=64, mode="L", max_pixels=10**6, notes=[])


def test_grow_is_an_exact_square_dilation_clipped_at_the_border() -> None:
    bits = np.zeros((9, 9), np.uint8)
    bits[4, 4] = bits[0, 8] = 1
    grown = grow(bits, 2)
    expected = np.zeros((9, 9), np.uint8)
    expected[2:7, 2:7] = 1
    expected[0:3, 6:9] = 1
    assert (grown == expected).all()
    assert (grow(bits, 0) == bits).all() and not grow(np.zeros((3, 3), np.uint8), 5).any()


def test_fit_region_keeps_a_one_pixel_stroke_when_scaled_down() -> None:
    region = np.zeros((56, 56), bool)
    region[:, 31] = True  # one column: nearest-neighbour at half size would drop it
    bits = fit_region(region, 28, 28, "resize")
    assert bits[:, 15].all() and bits.sum() == 28


def _settings(tmp_path: Path | None = None, **kw: Any) -> Any:
    return decode_settings(out_uri=str(tmp_path) if tmp_path else None, **kw)


def _rows(records: list[dict[str, Any]], base: str) -> pa.Table:
    """Manifest rows normalised as JSON Lines are (values of any type, as a user wrote them)."""
    table = pa.table({"text": [json.dumps(r) for r in records]})
    return normalize_batch(table, json_lines=True, base=base)


def test_manifest_rules() -> None:
    rows = _rows([
        {"id": "c", "base": "b.png", "overlay": "o.png", "x": "3", "y": 0.25, "scale": "1.5"},
        {"id": "mixed", "guide": "g.png", "base": "b.png", "overlay": "o.png"},
        {"id": "mixed-2", "original": "a.png", "edited": "b.png", "x": 1},
        {"id": "no-overlay", "base": "b.png", "overlay_mask": "m.png"},
        {"id": "nothing"},
        {"id": "bad-x", "base": "b.png", "overlay": "o.png", "x": 2.5},
        {"id": "bad-scale", "base": "b.png", "overlay": "o.png", "scale": 0},
        {"id": "own-margin", "base": "b.png", "overlay": "o.png", "margin": "5"},
        {"id": "margin-on-guide", "guide": "g.png", "margin": 1},
        {"id": "threshold-on-composite", "base": "b.png", "overlay": "o.png", "threshold": 1},
    ], base="/data/m.csv").to_pylist()
    by_id = {r["id"]: r for r in rows}
    good = by_id["c"]
    placed = (good["workflow"], resolved(good)["base"], good["x"], good["y"], good["scale"])
    assert placed == ("composite", "/data/b.png", 3, 0.25, 1.5) and good["base"] == "b.png"
    assert good["error"] is None
    assert by_id["mixed"]["error"] == ("bad row: it gives guide and base, overlay; give exactly one of guide, "
                                         "base + overlay, original + edited")
    assert by_id["mixed-2"]["error"].startswith("bad row: it gives x and edited, original")
    assert by_id["no-overlay"]["error"] == "bad row: a composite needs base and overlay; overlay is empty"
    assert by_id["nothing"]["error"].startswith("missing guide: the row gives no guide")
    assert by_id["bad-x"]["error"] == "bad override: x=2.5 must be whole pixels or a fraction in (0, 1)"
    assert by_id["bad-scale"]["error"] == "bad override: scale=0 must be in (0, 64]"
    assert by_id["own-margin"]["margin"] == 5 and by_id["own-margin"]["error"] is None
    assert by_id["margin-on-guide"]["error"] == "bad override: margin applies to composite and stroke-edit rows only"
    assert by_id["threshold-on-composite"]["error"].startswith("bad override: threshold applies to stroke-edit")


def test_required_columns() -> None:
    assert missing_columns(["id", "guide"]) == [] and missing_columns(["id", "base", "overlay"]) == []
    assert missing_columns(["id", "original", "edited", "x"]) == []
    assert missing_columns(["id", "base"]) == ["guide (or image, or base + overlay, or original + edited)"]
    assert missing_columns(["guide"]) == ["id"]


@pytest.fixture(scope="module")
def composite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("composite")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(root / "base.png")
    Image.fromarray(rng.integers(0, 256, (2 * SIZE, 2 * SIZE), dtype=np.uint8)).save(root / "big-base.png")
    disc = Image.new("LA", (6, 6), (0, 0))
    for y in range(6):
        for x in range(6):
            if (x - 2.5) ** 2 + (y - 2.5) ** 2 <= 7:
                disc.putpixel((x, y), (230, 255))
    disc.save(root / "disc.png")
    Image.new("L", (4, 4), 20).save(root / "square.png")
    cover = np.zeros((4, 4), np.uint8)
    cover[1:3, :] = 255
    Image.fromarray(cover).save(root / "square-mask.png")
    return root


def test_decode_builds_records_and_keeps_the_base(composite_dir: Path, tmp_path: Path) -> None:
    table = _rows([
        {"id": "disc", "base": "base.png", "overlay": "disc.png", "x": 4, "y": 5},
        {"id": "square", "base": "base.png", "overlay": "square.png", "overlay_mask": "square-mask.png", "x": 0,
         "y": 0},
        {"id": "outside", "base": "base.png", "overlay": "square.png", "x": 40, "y": 0},
    ], base=str(composite_dir / "m.csv"))
    out = decode_batch(table, _settings(tmp_path, composite_margin=1)).to_pylist()
    assert [r["id"] for r in out] == ["disc", "disc", "square", "square", "outside", "outside"]
    base = np.asarray(Image.open(composite_dir / "base.png"))
    disc = out[0]
    pixels = np.frombuffer(disc["pixels"], np.uint8).reshape(SIZE, SIZE)
    bits = np.frombuffer(disc["edit_mask"], np.uint8).reshape(SIZE, SIZE)
    alpha = np.asarray(Image.open(composite_dir / "disc.png").getchannel("A")) > 0
    pasted = np.zeros((SIZE, SIZE), bool)
    pasted[5:11, 4:10] = alpha
    assert (pixels[pasted] == 230).all() and (pixels[~pasted] == base[~pasted]).all()
    assert (bits == grow(pasted.astype(np.uint8), 1)).all()
    assert disc["workflow"] == "composite" and disc["guide"] is None and disc["base"].endswith("base.png")
    assert (disc["built_guide"], disc["built_mask"]) == ("inputs/disc_guide.png", "inputs/disc_mask.png")  # no shard
    assert (np.asarray(Image.open(tmp_path / "inputs/disc_guide.png")) == pixels).all()
    assert (np.asarray(Image.open(tmp_path / "inputs/disc_mask.png")) == bits * 255).all()
    assert disc["notes"] == ("composite: overlay 6x6 at (4,5) scale 1, pixels from its alpha; "
                             f"edit mask: overlay region ({alpha.sum()} px), grown 1 px")
    square = np.frombuffer(out[2]["pixels"], np.uint8).reshape(SIZE, SIZE)
    assert (square[1:3, :4] == 20).all() and (square[0, :4] == base[0, :4]).all()
    assert out[4]["status"] == "error" and out[4]["error"].startswith("bad composite: the 4x4 overlay at (40,0)")
    assert out[4]["built_guide"] is None and sorted(p.name for p in (tmp_path / "inputs").iterdir()) == [
        "disc_guide.png", "disc_mask.png", "square_guide.png", "square_mask.png"]


def test_whole_mask_and_a_rows_own_mask(composite_dir: Path) -> None:
    cover = np.zeros((SIZE, SIZE), np.uint8)
    cover[:, :3] = 255
    Image.fromarray(cover).save(composite_dir / "left.png")
    table = _rows([{"id": "w", "base": "big-base.png", "overlay": "square.png"},
                   {"id": "m", "base": "base.png", "overlay": "square.png", "mask": "left.png"}],
                  base=str(composite_dir / "m.csv"))
    whole, _, own, _ = decode_batch(table, _settings(composite_mask="whole")).to_pylist()
    assert whole["edit_mask"] is None and whole["built_guide"] is None  # no out_uri: nothing recorded
    assert "guide 32x32 fitted to 16x16 by resize" in whole["notes"] and whole["notes"].endswith(
        "edit mask: whole image (input.composite_mask=whole)")
    bits = np.frombuffer(own["edit_mask"], np.uint8).reshape(SIZE, SIZE)
    assert bits[:, :3].all() and bits.sum() == 3 * SIZE and "the row's mask" in own["notes"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_composite_end_to_end(tmp_path: Path, composite_dir: Path, tiny_model: Path, job_data: Any,
                              write_manifest: Any, record_outcome: Any) -> None:
    names = ["id", "guide", "base", "overlay", "overlay_mask", "x", "y", "scale"]
    rows = [
        {"id": "disc", "base": "base.png", "overlay": "disc.png", "x": 4, "y": 5},
        {"id": "square-scaled", "base": "base.png", "overlay": "square.png", "overlay_mask": "square-mask.png",
         "x": 0.5, "y": 0, "scale": 2},
        {"id": "plain", "guide": "base.png"},
        {"id": "outside", "base": "base.png", "overlay": "square.png", "x": -9, "y": 0},
        {"id": "mixed", "guide": "base.png", "base": "base.png", "overlay": "disc.png"},
        {"id": "no-base", "overlay": "disc.png"},
        {"id": "missing-overlay", "base": "base.png", "overlay": "nope.png"},
    ]
    manifest = write_manifest(composite_dir, "composite.csv", [{n: r.get(n) for n in names} for r in rows])
    out = tmp_path / "out"
    summary = run_job(build_spec(job_data(tiny_model, manifest, out, input={"composite_margin": 1})))
    df = pd.read_parquet(out / "index").set_index(["id", "sample"]).sort_index()
    assert summary.outputs_ok == 6 and len(df) == 14
    errors = df.xs(0, level="sample").error.dropna().to_dict()
    assert errors["outside"].startswith("bad composite: the 4x4 overlay at (-9,0) lies outside")
    assert errors["mixed"].startswith("bad row: it gives guide and base, overlay")
    assert errors["no-base"] == "bad row: a composite needs base and overlay; base is empty"
    assert errors["missing-overlay"].startswith("missing overlay: ")
    for item, case in [("outside", "composite overlay placed outside the base"),
                       ("mixed", "row giving a guide and a base + overlay"),
                       ("no-base", "composite row without its base"), ("missing-overlay", "missing overlay file")]:
        rows = df.xs(item, level="id")
        lost = int(sorted(rows.index) != [0, 1] or (rows.status != "error").any())
        record_outcome(case, f"error row `{errors[item][:110].replace(str(composite_dir) + '/', '')}`", lost, 0)
    base = np.asarray(Image.open(composite_dir / "base.png"))
    for item in ("disc", "square-scaled"):
        first = df.loc[(item, 0)]
        assert first.workflow == "composite" and first.built_guide == f"inputs/{first.shard}/{item}_guide.png"
        guide = np.asarray(Image.open(out / first.built_guide))
        keep = np.asarray(Image.open(out / first.built_mask)) == 0
        assert (guide[keep] == base[keep]).all() and keep.sum() < SIZE * SIZE
        for sample in (0, 1):
            image = np.asarray(Image.open(out / df.loc[(item, sample)].image))
            assert (image[keep] == base[keep]).all() and (image[~keep] != guide[~keep]).any()
    assert "at (8,0) scale 2" in df.loc[("square-scaled", 0)].notes
    assert df.loc[("plain", 0)].workflow == "guide" and pd.isna(df.loc[("plain", 0)].built_guide)
    assert len(list((out / "inputs").rglob("*.png"))) == 4  # once per item, not per sample
    assert (out / "sheet.png").exists()
