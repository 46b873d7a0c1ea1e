"""Stroke-edit rows (original + edited): the edit mask derived from where they differ, exactly, and one
end-to-end run (JSON Lines manifest) with its resume: the index, recorded inputs and kept region."""

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

from pipeline.compose import difference
from pipeline.decode import decode_batch
from pipeline.jobfile import build_spec
from pipeline.manifest import normalize_batch
from pipeline.run import run_job


def _diff(before: np.ndarray, after: np.ndarray, threshold: int, mode: str = "L") -> np.ndarray:
    return difference(Image.fromarray(before), Image.fromarray(after), mode=mode, threshold=threshold, notes=[])[1]


def test_threshold_is_exact_and_any_channel_counts() -> None:
    before = np.full((4, 4), 100, np.uint8)
    after = before.copy()
    after[0, 0], after[1, 1], after[2, 2] = 124, 125, 75  # +24 (not above 24), +25, -25
    assert (np.argwhere(_diff(before, after, 24)) == [[1, 1], [2, 2]]).all()
    assert _diff(before, after, 0).sum() == 3 and not _diff(before, after, 25).any()
    rgb = np.zeros((2, 2, 3), np.uint8)
    edited = rgb.copy()
    edited[0, 1, 2] = 40  # blue only
    assert (_diff(rgb, edited, 24, "RGB") == [[False, True], [False, False]]).all()


def test_sizes_must_match() -> None:
    with pytest.raises(ValueError, match="bad stroke edit: original is 4x4 but edited is 5x3; they must be the same"):
        _diff(np.zeros((4, 4), np.uint8), np.zeros((3, 5), np.uint8), 10)


@pytest.fixture(scope="module")
def stroke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("strokes")
    rng = np.random.default_rng(1)
    original = rng.integers(40, 200, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(original).save(root / "original.png")
    edited = original.copy()
    edited[5:7, 3:12] = 250  # a bright stroke
    edited[12, 12] = original[12, 12] + 10  # a small change, below the threshold: kept
    Image.fromarray(edited).save(root / "edited.png")
    Image.fromarray(original).convert("RGB").save(root / "same-rgb.png")
    Image.fromarray(np.zeros((SIZE + 1, SIZE), np.uint8)).save(root / "taller.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(root / "left-mask.png")
    return root


def _rows(records: list[dict[str, Any]], base: Path) -> pa.Table:
    return normalize_batch(pa.table({"text": [json.dumps(r) for r in records]}), json_lines=True, base=str(base))


def test_decode_derives_grows_and_records_the_mask(stroke_dir: Path, tmp_path: Path) -> None:
    table = _rows([
        {"id": "stroke", "original": "original.png", "edited": "edited.png"},
        {"id": "masked", "original": "original.png", "edited": "edited.png", "mask": "left-mask.png"},
        {"id": "same", "original": "original.png", "edited": "same-rgb.png"},
        {"id": "same-masked", "original": "original.png", "edited": "same-rgb.png", "mask": "left-mask.png"},
        {"id": "taller", "original": "original.png", "edited": "taller.png"},
        {"id": "half", "original": "original.png"},
        {"id": "own", "original": "original.png", "edited": "edited.png", "threshold": 5, "margin": 0},
        {"id": "bad-own", "original": "original.png", "edited": "edited.png", "threshold": 255},
    ], stroke_dir / "m.jsonl")
    settings = decode_settings(seed=0, samples=1, edit_margin=1, out_uri=str(tmp_path))
    rows = {r["id"]: r for r in decode_batch(table, settings).to_pylist()}
    stroke = rows["stroke"]
    bits = np.frombuffer(stroke["edit_mask"], np.uint8).reshape(SIZE, SIZE)
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[4:8, 2:13] = 1  # the stroke (rows 5-6, columns 3-11) grown by 1; the small change is not in it
    assert (bits == expected).all()
    edited = np.asarray(Image.open(stroke_dir / "edited.png"))
    assert (np.frombuffer(stroke["pixels"], np.uint8).reshape(SIZE, SIZE) == edited).all()  # the guide: edited
    assert stroke["notes"] == "edit mask: 18 px differ by more than 24, grown 1 px"
    assert (stroke["workflow"], stroke["guide"], stroke["mask"]) == ("stroke_edit", None, None)
    assert stroke["original"].endswith("original.png") and stroke["edited"].endswith("edited.png")
    assert (np.asarray(Image.open(tmp_path / stroke["built_mask"])) == bits * 255).all()
    assert (np.asarray(Image.open(tmp_path / stroke["built_guide"])) == edited).all()
    masked = np.frombuffer(rows["masked"]["edit_mask"], np.uint8).reshape(SIZE, SIZE)
    assert masked[:, :4].all() and masked.sum() == 4 * SIZE  # the row's mask wins
    assert rows["same"]["error"] == ("bad stroke edit: no difference between original and edited (no pixel "
                                     "differs by more than 24, the row's threshold or input.edit_threshold)")
    assert rows["same-masked"]["status"] == "ok" and "the row's mask" in rows["same-masked"]["notes"]
    assert rows["taller"]["error"] == ("bad stroke edit: original is 16x16 but edited is 16x17; they must be "
                                       "the same size")
    assert rows["half"]["error"] == "bad row: a stroke edit needs original and edited; edited is empty"
    own = np.frombuffer(rows["own"]["edit_mask"], np.uint8).reshape(SIZE, SIZE)  # the row's threshold and margin
    assert own.sum() == 19 and own[12, 12]
    assert rows["own"]["notes"] == "edit mask: 19 px differ by more than 5, grown 0 px"
    assert rows["bad-own"]["error"] == "bad override: threshold=255 must be between 0 and 254"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_stroke_edit_end_to_end_and_resume(tmp_path: Path, stroke_dir: Path, tiny_model: Path, job_data: Any,
                                           write_manifest: Any, record_outcome: Any) -> None:
    rows = [
        {"id": "stroke", "original": "original.png", "edited": "edited.png"},
        {"id": "masked", "original": "original.png", "edited": "edited.png", "mask": "left-mask.png", "t0": 0.2},
        {"id": "same", "original": "original.png", "edited": "same-rgb.png"},
        {"id": "with-guide", "guide": "edited.png", "original": "original.png", "edited": "edited.png"},
    ]
    manifest = write_manifest(stroke_dir, "strokes.jsonl", rows)
    out = tmp_path / "out"
    data = job_data(tiny_model, manifest, out, input={"edit_threshold": 30, "edit_margin": 1})
    summary = run_job(build_spec(data))
    df = pd.read_parquet(out / "index").set_index(["id", "sample"]).sort_index()
    assert summary.outputs_ok == 4 and len(df) == 8
    assert df.loc[("same", 0)].error.startswith("bad stroke edit: no difference")
    assert df.loc[("with-guide", 0)].error.startswith("bad row: it gives guide and edited, original")
    for item, case in [("same", "stroke edit whose edited image equals the original"),
                       ("with-guide", "row giving a guide and an original + edited")]:
        rows = df.xs(item, level="id")
        lost = int(sorted(rows.index) != [0, 1] or (rows.status != "error").any())
        record_outcome(case, f"error row `{rows.error.iloc[0][:110]}`", lost, 0)
    edited = np.asarray(Image.open(stroke_dir / "edited.png"))
    for item in ("stroke", "masked"):
        keep = np.asarray(Image.open(out / df.loc[(item, 0)].built_mask)) == 0
        assert (np.asarray(Image.open(out / df.loc[(item, 0)].built_guide)) == edited).all()
        for sample in (0, 1):
            image = np.asarray(Image.open(out / df.loc[(item, sample)].image))
            assert (image[keep] == edited[keep]).all() and (image[~keep] != edited[~keep]).any()
    assert df.loc[("stroke", 0)].notes == "edit mask: 18 px differ by more than 30, grown 1 px"

    # Resume after a kill inside the shard (its rows in a part file, no index file or record yet): a
    # lost output and its item's recorded inputs come back; nothing else is made again.
    shard = df.loc[("stroke", 1)].shard
    (out / ".work" / shard).mkdir(parents=True)
    (out / "index" / f"{shard}.parquet").rename(out / ".work" / shard / "old-part.parquet")
    (out / "shards" / f"{shard}.json").unlink()
    (out / df.loc[("stroke", 1)].image).unlink()
    (out / "inputs" / shard / "stroke_mask.png").unlink()
    kept = (out / df.loc[("masked", 0)].image).stat().st_mtime_ns
    data["output"]["if_exists"] = "resume"
    again = run_job(build_spec(data))
    assert again.resumed_outputs == 3 and again.outputs_ok == 4
    df2 = pd.read_parquet(out / "index").set_index(["id", "sample"]).sort_index()
    assert df2.loc[("stroke", 1)].status == "ok" and (out / "inputs" / shard / "stroke_mask.png").exists()
    assert (out / df.loc[("masked", 0)].image).stat().st_mtime_ns == kept
