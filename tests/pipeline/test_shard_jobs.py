"""Whole jobs by shard: a manifest that grows between nightly runs, the Ray-read path for large
manifests (same outputs as the driver-read one), and WebDataset output read by `webdataset` and
`datasets`."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def _manifest(folder: Path, items: range, name: str = "m.csv", duplicate: str | None = None) -> Path:
    path = folder / name
    rows = [f"item-{i:02d},img/g{i % 2}.png" for i in items] + ([f"{duplicate},img/g0.png"] if duplicate else [])
    path.write_text("id,guide\n" + "\n".join(rows) + "\n")
    return path


def _images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


def test_a_grown_manifest_reruns_only_its_last_and_new_shards(tmp_path: Path, data_dir: Path, tiny_model: Path,
                                                             job_data: Any) -> None:
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    manifest = _manifest(folder, range(7))
    out = tmp_path / "out"
    data = job_data(tiny_model, manifest, out, input={"shard_rows": 3}, output={"if_exists": "resume"})
    first = run_job(build_spec(data))
    assert first.outputs == 14 and first.exit_code == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["m-00000.json", "m-00001.json", "m-00002.json"]
    before = {p: (out / p).stat().st_mtime_ns for p in _images(out)}
    import datasets

    cache = str(tmp_path / "hf")  # one cache for both reads: the grown output must not come back stale
    assert datasets.load_dataset(str(out), split="train", cache_dir=cache).num_rows == 14
    _manifest(folder, range(10))  # three rows appended: shard 2 grows to 3 rows, shard 3 is new
    second = run_job(build_spec(data))
    assert second.exit_code == 0 and second.outputs == 20 and second.resumed_outputs == 14
    assert second.items_run == 3
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before  # nothing done was touched
    records = {p.stem: json.loads(p.read_text()) for p in (out / "shards").iterdir()}
    assert {k: (r["rows"], r["outputs"], r["outputs_new"]) for k, r in records.items()} == {
        "m-00000": (3, 6, 6), "m-00001": (3, 6, 6), "m-00002": (3, 6, 4), "m-00003": (1, 2, 2)}
    index = pd.read_parquet(out / "index")
    assert len(index) == 20 and not index.duplicated(["id", "sample"]).any() and (index.status == "ok").all()
    assert datasets.load_dataset(str(out), split="train", cache_dir=cache).num_rows == 20
    clean = tmp_path / "clean"  # byte-identical to a clean run of the grown manifest
    run_job(build_spec(job_data(tiny_model, manifest, clean, input={"shard_rows": 3})))
    assert _images(clean) == _images(out)
    third = run_job(build_spec(data))  # nothing left: no shard is read, nothing is made
    assert third.outputs == 20 and third.resumed_outputs == 20 and third.items_run == 0


def test_the_ray_read_path_makes_the_same_outputs(tmp_path: Path, data_dir: Path, tiny_model: Path, job_data: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.source
    from pipeline.manifest import ManifestError

    manifest = _manifest(data_dir, range(9), name="nine.csv")
    small = tmp_path / "small"
    run_job(build_spec(job_data(tiny_model, manifest, small, input={"shard_rows": 4})))
    monkeypatch.setattr(pipeline.source, "SMALL_MANIFESTS_BYTES", 0)  # every manifest read by Ray tasks
    large = tmp_path / "large"
    summary = run_job(build_spec(job_data(tiny_model, manifest, large, input={"shard_rows": 4})))
    assert summary.outputs == 18 and _images(large) == _images(small)
    assert pd.read_parquet(large / "index").shard.value_counts().to_dict() == {
        "nine-00000": 8, "nine-00001": 8, "nine-00002": 2}
    twice = _manifest(data_dir, range(9), name="twice.csv", duplicate="item-03")
    with pytest.raises(ManifestError, match="duplicate ids 'item-03'"):
        run_job(build_spec(job_data(tiny_model, twice, tmp_path / "dup", input={"shard_rows": 4})))
    assert not (tmp_path / "dup" / "images").exists()  # found before any work


@pytest.mark.parametrize("embed", [False, True])
def test_webdataset_shards_read_by_webdataset_and_datasets(tmp_path: Path, data_dir: Path, tiny_model: Path,
                                                           job_data: Any, embed: bool) -> None:
    import datasets
    import webdataset as wds

    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    manifest = _manifest(folder, range(5))
    manifest.write_text(manifest.read_text().replace("id,guide\n", "id,guide,mask\n").replace(".png\n", ".png,\n")
                        .replace("item-04,img/g0.png,", "item-04,img/g0.png,img/m3.png"))
    out = tmp_path / "out"
    data = job_data(tiny_model, manifest, out, input={"shard_rows": 3},
                    output={"webdataset": True, "embed_images": embed, "if_exists": "resume"})
    summary = run_job(build_spec(data))
    assert summary.outputs == 10 and not (out / "images").exists() and not (out / ".work").exists()
    tars = sorted(str(p) for p in (out / "webdataset").glob("*.tar"))
    assert [Path(t).name for t in tars] == ["m-00000.tar", "m-00001.tar"]
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == 10 and all(s["png"].size == (16, 16) for s in samples)
    assert sorted((s["json"]["id"], s["json"]["sample"]) for s in samples) == [
        (f"item-{i:02d}", k) for i in range(5) for k in range(2)]
    index = pd.read_parquet(out / "index")
    paths = index.image.map(lambda v: v["path"] if isinstance(v, dict) else v)
    assert set(paths) == {s["json"]["image"] for s in samples}
    loaded = datasets.load_dataset(str(out / "webdataset"), split="train")  # its card types every JSON field
    assert loaded.num_rows == 10 and loaded[0]["png"].size == (16, 16) and loaded[0]["json"]["status"] == "ok"
    assert sum(r["json"]["mask"] is not None for r in loaded) == 2
    assert (out / "sheet.png").is_file()
    with tarfile.open(tars[1]) as tar:
        old = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")}
    with open(manifest, "a") as f:  # the last shard grows: its tar is packed again, earlier outputs kept
        f.write("item-05,img/g1.png,\n")
    again = run_job(build_spec(data))
    assert again.outputs == 12 and again.resumed_outputs == 10
    with tarfile.open(tars[1]) as tar:
        now = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")}
    assert len(now) == 6 and all(now[name] == data for name, data in old.items())
