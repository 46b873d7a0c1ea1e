"""Shards: planning (offsets, never rows), reading a shard's rows, growth, the distributed id check,
finishing a shard (merge, index file, record) and resume's view of shards."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.shards as shards_module
from pipeline.index import to_index_table
from pipeline.manifest import ManifestError
from pipeline.naming import OutputLayout
from pipeline.shards import plan_shards, read_shard, read_shard_ids, scan_rows


def _csv_rows(text: str) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 20])
def test_scan_rows_finds_row_starts_like_a_csv_parser(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(shards_module, "_CHUNK", chunk)
    text = 'id,guide\n1,"a\nb"\n\n2,c\n  \n"3",",x"\n4,"q""\n"\n5,e'  # quoted newlines, blank lines, no final \n
    header_end, offsets, rows = scan_rows(io.BytesIO(text.encode()), True, 2)
    assert rows == 5 and text[:header_end] == "id,guide\n"
    pieces = [text[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
    assert [len(_csv_rows(p)) for p in pieces] == [2, 2, 1]
    assert [r for p in pieces for r in _csv_rows(p)] == _csv_rows(text)[1:]


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_scan_rows_json_lines(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(shards_module, "_CHUNK", chunk)
    lines = [json.dumps({"id": i, "guide": f"g{i}.png"}) for i in range(7)]
    text = "\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n"
    header_end, offsets, rows = scan_rows(io.BytesIO(text.encode()), False, 3)
    assert (header_end, rows, len(offsets)) == (0, 7, 4)
    pieces = [text[offsets[k]:offsets[k + 1]] for k in range(3)]
    assert [[x for x in p.splitlines() if x] for p in pieces] == [lines[0:3], lines[3:6], lines[6:7]]


def _parquet(path: Path, ids: list[str], row_group: int) -> Path:
    table = pa.table({"id": ids, "guide": [f"g/{i}.png" for i in ids], "extra": list(range(len(ids)))})
    pq.write_table(table, path, row_group_size=row_group)
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_shards_read_back_the_whole_manifest_in_order(tmp_path: Path, fmt: str) -> None:
    ids = [f"item-{i:03d}" for i in range(23)]
    if fmt == "parquet":
        path = _parquet(tmp_path / "m.parquet", ids, row_group=4)
    elif fmt == "csv":
        path = tmp_path / "m.csv"
        path.write_text("id,guide\n" + "".join(f'{i},"g/{i}.png"\n' for i in ids))
    else:
        path = tmp_path / "m.jsonl"
        path.write_text("".join(json.dumps({"id": i, "guide": f"g/{i}.png"}) + "\n" for i in ids))
    planned = plan_shards([str(path)], "auto", {}, shard_rows=5)
    assert [s.name for s in planned] == [f"m-{k:05d}" for k in range(5)]
    assert [(s.start, s.stop) for s in planned] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    tables = [read_shard(s, {}) for s in planned]
    assert [t.num_rows for t in tables] == [5, 5, 5, 5, 3]
    rows = pa.concat_tables(tables)
    assert rows.column("id").to_pylist() == ids
    assert rows.column("guide").to_pylist() == [f"g/{i}.png" for i in ids]  # as given, resolved by decode
    assert set(rows.column("manifest").to_pylist()) == {str(path)}
    assert rows.column("shard").to_pylist() == [f"m-{k // 5:05d}" for k in range(23)]
    assert pa.concat_arrays([read_shard_ids(s, {}) for s in planned]).to_pylist() == ids


def test_a_growing_manifest_keeps_its_earlier_shards(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "b.csv").write_text("id,guide\n" + "".join(f"b{i},g.png\n" for i in range(7)))
    (folder / "_SUCCESS").write_text("")  # hidden and underscore files are no manifests
    before = plan_shards([str(folder)], "csv", {}, shard_rows=3)
    with open(folder / "b.csv", "a") as f:
        f.write("".join(f"b{i},g.png\n" for i in range(7, 11)))
    (folder / "a.csv").write_text("id,guide\na0,g.png\n")  # sorts first: the others keep their names
    after = plan_shards([str(folder)], "csv", {}, shard_rows=3)
    assert [s.name for s in before] == ["b-00000", "b-00001", "b-00002"]
    assert [s.name for s in after] == ["a-00000", "b-00000", "b-00001", "b-00002", "b-00003"]
    assert after[1:3] == before[:2]  # full shards: unchanged
    assert (after[3].start, after[3].stop, before[2].stop) == (6, 9, 7)  # the last one grew
    assert read_shard(after[3], {}).column("id").to_pylist() == ["b6", "b7", "b8"]


def test_two_manifests_with_one_file_name_get_distinct_shards(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "m.csv").write_text(f"id,guide\n{sub}1,g.png\n")
    planned = plan_shards([str(tmp_path / "x" / "m.csv"), str(tmp_path / "y" / "m.csv")], "auto", {})
    assert [s.name for s in planned] == ["m-00000", "m-m1-00000"]


def test_planning_errors_name_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        plan_shards([str(tmp_path / "nope.csv")], "auto", {})
    (tmp_path / "empty.csv").write_text("id,guide\n")
    with pytest.raises(ManifestError, match="has no rows"):
        plan_shards([str(tmp_path / "empty.csv")], "auto", {})
    (tmp_path / "noid.csv").write_text("name,guide\nx,g.png\n")
    with pytest.raises(ManifestError, match="lacks column"):
        plan_shards([str(tmp_path / "noid.csv")], "auto", {})


def test_bucket_of_is_stable_and_spreads() -> None:
    from pipeline.idcheck import bucket_of

    ids = pa.array([f"item-{i:09d}" for i in range(20_000)])
    buckets = bucket_of(ids, 16)
    assert (buckets == bucket_of(ids.slice(0), 16)).all()
    assert (bucket_of(ids.slice(100, 50), 16) == buckets[100:150]).all()  # an id's bucket is its own
    counts = [(buckets == b).sum() for b in range(16)]
    assert min(counts) > 0.8 * 20_000 / 16 and max(counts) < 1.2 * 20_000 / 16


def test_distributed_id_check_finds_duplicates_across_shards(ray_session: Any, tmp_path: Path) -> None:
    from pipeline.idcheck import check_unique_ids

    ids = [f"i{k}" for k in range(50)]
    path = _parquet(tmp_path / "m.parquet", [*ids, "i3", "i47"], row_group=10)
    planned = plan_shards([str(path)], "auto", {}, shard_rows=7)
    with pytest.raises(ManifestError, match=r"duplicate ids 'i3', 'i47'|duplicate ids 'i47', 'i3'"):
        check_unique_ids(planned, {})
    check_unique_ids(plan_shards([str(_parquet(tmp_path / "ok.parquet", ids, 10))], "auto", {}, 7), {})
    (tmp_path / "nulls.csv").write_text("id,guide\na,g.png\n,g.png\n  ,g.png\n")
    with pytest.raises(ManifestError, match="2 row"):
        check_unique_ids(plan_shards([str(tmp_path / "nulls.csv")], "auto", {}), {})


def _part(root: Path, shard: str, run: str, rows: list[dict[str, Any]]) -> None:
    folder = root / ".work" / shard
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_index_table(rows), folder / f"{run}-{len(list(folder.iterdir()))}.parquet")


def _row(item: str, status: str = "ok", sample: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": item, "sample": sample, "t0": 0.5, "status": status, "shard": "s-00000",
            "error_kind": None if status == "ok" else "missing guide", "image": f"images/s-00000/{item}_s{sample}.png",
            **extra}


def test_finish_merges_earlier_and_new_rows_once_then_records(tmp_path: Path) -> None:
    from pipeline.finalize import FinishSettings, finish_shard, read_records

    _part(tmp_path, "s-00000", "old", [_row("c"), _row("a", "error"), _row("b")])
    _part(tmp_path, "s-00000", "new", [_row("a"), _row("d", "error", notes="grey mask")])
    _part(tmp_path, "s-00000", "new", [_row("b")])  # made again (its image was missing): the new row wins
    settings = FinishSettings(out_uri=str(tmp_path), layout=OutputLayout(), embed_images=False, rows_per_file=3,
                              run_id="new")
    shard = {"name": "s-00000", "uri": "m.csv", "format": "csv", "start": 0, "stop": 4}
    record = finish_shard(shard, settings)
    index = pq.ParquetDataset([str(tmp_path / f) for f in record["index_files"]]).read().to_pylist()
    assert [(r["id"], r["status"]) for r in index] == [("a", "ok"), ("b", "ok"), ("c", "ok"), ("d", "error")]
    assert record["index_files"] == ["index/s-00000.parquet", "index/s-00000.1.parquet"]  # 3 rows per file
    assert (record["outputs"], record["outputs_ok"], record["items_failed"], record["outputs_new"]) == (4, 3, 1, 3)
    assert record["failures_by_reason"] == {"missing guide": 1} and record["items_with_notes"] == 1
    assert not (tmp_path / ".work" / "s-00000").exists()
    assert read_records(str(tmp_path)) == {"s-00000": record}


def _resume_setup(tmp_path: Path, job_data: Any, tiny_model: Path) -> tuple[Any, list[Any]]:
    from pipeline.jobfile import build_spec
    from pipeline.outdir import write_job_record

    manifest = tmp_path / "m.csv"
    manifest.write_text("id,guide\n" + "".join(f"i{k},g.png\n" for k in range(9)))
    spec = build_spec(job_data(tiny_model, manifest, tmp_path / "out", output={"if_exists": "resume"},
                               input={"shard_rows": 3}))
    write_job_record(spec, {"model": {"label": "tiny@sha256:x"}})
    return spec, plan_shards([str(manifest)], "auto", {}, 3)


def _record(out: Path, shard: str, rows: int, failures: dict[str, int] | None = None) -> None:
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "shards" / f"{shard}.json").write_text(json.dumps({
        "shard": shard, "rows": rows, "outputs": rows, "outputs_ok": rows - sum((failures or {}).values()),
        "items": rows, "items_failed": 0, "failures_by_reason": failures or {}, "items_with_notes": 0,
        "outputs_new": rows, "items_new": rows, "run_id": "old", "index_files": [], "webdataset": None}))


def test_resume_runs_only_unfinished_shards_and_skips_their_done_outputs(
        tmp_path: Path, job_data: Any, tiny_model: Path) -> None:
    from pipeline.resume import plan_work

    spec, planned = _resume_setup(tmp_path, job_data, tiny_model)
    out = tmp_path / "out"
    _record(out, "m-00000", 3)  # finished: never looked into again
    _record(out, "m-00001", 3, {"missing guide": 1})  # a guide may have arrived since: run again
    _part(out, "m-00002", "old", [_row("i6"), _row("i7", "error"), _row("i8")])  # killed inside this shard
    (out / "images" / "m-00002").mkdir(parents=True)
    (out / "images" / "m-00002" / "i6_s0.png").write_bytes(b"png")  # i8's image never landed: made again
    (out / "images" / "m-00002" / ".i9_s0.png.1234abcd.tmp").write_bytes(b"")  # an interrupted write
    (out / ".work" / "m-00000").mkdir(parents=True)  # a finish killed after its record: cleaned up
    work = plan_work(spec, planned, "tiny@sha256:x")
    assert [s.name for s in work.pending] == ["m-00001", "m-00002"] and list(work.finished) == ["m-00000"]
    assert work.done == {"m-00002": {"i6": ["/0"]}} and work.previous["m-00001"]["rows"] == 3
    assert not (out / ".work" / "m-00000").exists()
    assert not list((out / "images" / "m-00002").glob(".*.tmp"))
    assert work.resumed_outputs == 3 + 1


def test_resume_refuses_another_shard_size_and_the_flat_layout(tmp_path: Path, job_data: Any,
                                                                 tiny_model: Path) -> None:
    from pipeline.jobfile import build_spec
    from pipeline.resume import ResumeError, plan_work

    spec, planned = _resume_setup(tmp_path, job_data, tiny_model)
    out = tmp_path / "out"
    _record(out, "m-00000", 3)
    other = build_spec({**spec.public_dict(), "input": {**spec.public_dict()["input"], "shard_rows": 4}})
    with pytest.raises(ResumeError, match="input.shard_rows: 3 -> 4"):
        plan_work(other, planned, "tiny@sha256:x")
    record = json.loads((out / "job.json").read_text())
    record.pop("layout")
    (out / "job.json").write_text(json.dumps(record))
    with pytest.raises(ResumeError, match="earlier sdedit-pipeline"):
        plan_work(spec, planned, "tiny@sha256:x")
