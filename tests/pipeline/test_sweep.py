"""t0 sweeps: ``sampling.t0`` as a list runs every item at every value, names and the index say which
t0, every t0 of an output shares its seed, a resume redoes exactly what is missing, and the sweep
sheet and faithfulness plot are drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from pipeline.jobfile import SpecError, build_spec
from pipeline.naming import OutputLayout, canonical_t0, image_relpath, t0_label
from pipeline.run import run_job

SWEEP = [0.1, 0.3]
IDS = ["plain-0", "plain-1", "override"]  # override: its own t0 (0.2), seed 7, 3 samples


def _base() -> dict[str, Any]:
    return {"input": {"manifest": "m.csv"}, "output": {"uri": "out"}, "model": {"uri": "fashion-mnist-ddpm"}}


@pytest.mark.parametrize(("t0", "message"), [
    ([], "at least one t0"),
    ([0.3, 0.3], "same t0"),
    ([0.3, 0.3000000001], "same t0"),
    ([0.3, 1.5], "in (0, 1]"),
    ([0.0, 0.5], "in (0, 1]"),
    (float("nan"), "in (0, 1]"),
    ([0.3, "high"], "valid number"),
])
def test_t0_list_validation_names_the_field(t0: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        build_spec({**_base(), "sampling": {"t0": t0}})
    assert "sampling.t0" in str(info.value) and message in str(info.value)


def test_t0_list_and_single_value() -> None:
    sweep = build_spec({**_base(), "sampling": {"t0": [0.7, 0.3, 0.5]}}).sampling
    assert sweep.sweep and sweep.t0_values == (0.7, 0.3, 0.5)
    single = build_spec({**_base(), "sampling": {"t0": 0.4}}).sampling
    assert not single.sweep and single.t0_values == (0.4,)
    assert build_spec({**_base(), "sampling": {"t0": [0.4]}}).sampling.sweep  # a list is a sweep, even of one


def test_names_and_keys() -> None:
    assert image_relpath("s", "a", 1, "png", 0.3) == "images/s/a_t0.30_s1.png"
    assert image_relpath("s", "a", 1, "png") == "images/s/a_s1.png"  # single-t0 jobs keep their names
    assert t0_label(0.255) == "0.255" and t0_label(1.0) == "1.00"
    assert canonical_t0(0.1 + 0.2) == canonical_t0(0.3)  # 0.30000000000000004
    sweep, single = OutputLayout(sweep=True), OutputLayout(sweep=False)
    assert sweep.key("a", 0.1 + 0.2, 0) == sweep.key("a", 0.3, 0) == ("a", 0.3, 0)
    assert single.key("a", 0.3, 0) == ("a", None, 0)
    assert sweep.image_path("s", "a", 0.3, 1) == "images/s/a_t0.30_s1.png"
    assert single.image_path("s", "a", 0.3, 1) == "images/s/a_s1.png"
    assert sweep.done_key(0.1 + 0.2, 1) == "0.3/1" and single.done_key(0.3, 1) == "/1"
    packed = OutputLayout(sweep=True, webdataset=True)
    assert packed.image_path("s", "a.b", 0.3, 1) == f"webdataset/s.tar/{packed.member('a.b', 0.3, 1)}"
    assert "." not in packed.member("a.b", 0.3, 1).rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def sweep_job(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path, job_data: Any,
              manifest_rows: Any, write_manifest: Any, ray_session: None) -> dict[str, Any]:
    rows = [r for r in manifest_rows(False) if r["id"] in IDS]
    manifest = write_manifest(data_dir, "sweep.csv", rows)
    out = tmp_path_factory.mktemp("sweep") / "out"
    data = job_data(tiny_model, manifest, out, sampling={"t0": SWEEP})
    summary = run_job(build_spec(data))
    return {"data": data, "out": out, "summary": summary, "index": pd.read_parquet(out / "index")}


@pytest.mark.slow
def test_sweep_runs_every_item_at_every_t0(sweep_job: dict[str, Any]) -> None:
    index, summary = sweep_job["index"], sweep_job["summary"]
    expected = {(i, t0, s) for i in ("plain-0", "plain-1") for t0 in SWEEP for s in range(2)}
    expected |= {("override", 0.2, s) for s in range(3)}  # a manifest t0 overrides the sweep: one t0
    assert {(r.id, canonical_t0(r.t0), r.sample) for r in index.itertuples()} == expected
    assert len(index) == len(expected) and (index.status == "ok").all()
    assert summary.exit_code == 0 and summary.outputs == len(expected) and summary.items == 3


@pytest.mark.slow
def test_sweep_seeds_equal_across_t0_and_names_unique(sweep_job: dict[str, Any]) -> None:
    index, out = sweep_job["index"], sweep_job["out"]
    seeds = index.groupby(["id", "sample"]).generator_seed.nunique()
    assert (seeds == 1).all()  # a sweep column differs only by t0
    assert index.image.is_unique
    for row in index.itertuples():
        assert row.image == image_relpath(row.shard, row.id, row.sample, "png", row.t0)
        assert (out / row.image).is_file()
    assert sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*.png")) == sorted(index.image)
    plain = index[(index.id == "plain-0") & (index["sample"] == 0)].sort_values("t0")
    low, high = (Image.open(out / p).tobytes() for p in plain.image)
    assert low != high
    assert plain.faithfulness_l2.iloc[0] < plain.faithfulness_l2.iloc[1]  # t0 0.1 stays closer than 0.3


@pytest.mark.slow
def test_sweep_sheet_and_plot(sweep_job: dict[str, Any]) -> None:
    from pipeline.sheet import HEADER_H, LABEL_W, TILE

    out = sweep_job["out"]
    with Image.open(out / "sweep_sheet.png") as sheet:
        # rows: the two items run at both t0 (override ran at one); columns: guide + one per t0 (no mask)
        assert sheet.size == (LABEL_W + TILE * (1 + len(SWEEP)), HEADER_H + TILE * 2)
    with Image.open(out / "sweep_faithfulness.png") as plot:
        assert plot.size == (640, 400)
    assert (out / "sheet.png").is_file()


@pytest.mark.slow
def test_resume_of_a_sweep_redoes_exactly_the_missing_output(sweep_job: dict[str, Any]) -> None:
    out, data = sweep_job["out"], sweep_job["data"]
    shard = sweep_job["index"].shard.iloc[0]
    gone = image_relpath(shard, "plain-1", 1, "png", 0.3)
    others = {p.name: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png") if p.name != Path(gone).name}
    original = (out / gone).read_bytes()
    # killed inside the shard: its rows only in a part file, no index file or record yet; one image lost
    (out / ".work" / shard).mkdir(parents=True)
    (out / "index" / f"{shard}.parquet").rename(out / ".work" / shard / "old-part.parquet")
    (out / "shards" / f"{shard}.json").unlink()
    (out / gone).unlink()
    summary = run_job(build_spec({**data, "output": {**data["output"], "if_exists": "resume"}}))
    after = pd.read_parquet(out / "index")
    assert summary.exit_code == 0 and summary.resumed_outputs == len(sweep_job["index"]) - 1
    assert summary.items_run == 1 and summary.outputs == len(sweep_job["index"])
    assert (out / gone).read_bytes() == original  # same seed, same bytes
    assert not after.duplicated(["id", "t0", "sample"]).any() and (after.status == "ok").all()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")
            if p.name != Path(gone).name} == others
    redone = after[after.image == gone]
    before = sweep_job["index"].set_index("image").loc[gone]
    assert len(redone) == 1 and redone.seed.iloc[0] == before.seed
