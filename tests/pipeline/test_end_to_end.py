"""End to end on the shared local Ray: one run per manifest format, then checks on what they wrote.

Three runs share the same good items: CSV (through the CLI, with bad items and secrets, batch 4,
one actor), JSON Lines (batch 1, embedded images) and Parquet (two actors). Images must match
byte for byte across them: an output depends on its seed, never on its batch or actor.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from sdedit_testing import SIZE  # the tiny model's sample size

from pipeline.cli import main
from pipeline.index import INDEX_COLUMNS
from pipeline.jobfile import build_spec
from pipeline.run import run_job

GOOD_ITEMS = ["plain-0", "plain-1", "odd-size", "masked", "override"]
SECRET = "s3cr3t-Value-42"
pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def _images(out: Path, df: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    ok = df[df.status == "ok"]
    return {(r.id, r.sample): np.asarray(Image.open(out / _path(r.image))) for r in ok.itertuples()}


def _path(image: Any) -> str:
    return image["path"] if isinstance(image, dict) else image


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path,
            manifest_rows: Any, write_manifest: Any, job_data: Any) -> dict[str, Any]:
    manifest = write_manifest(data_dir, "all.csv", manifest_rows(include_bad=True))
    out = tmp_path_factory.mktemp("csv") / "out"
    data = job_data(tiny_model, manifest, out)
    data["storage_options"] = {"token": SECRET}
    job = tmp_path_factory.mktemp("jobs") / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", str(job), "--set", f"output.storage_options={{password: {SECRET}}}"])
    df = pd.read_parquet(out / "index")
    return {"out": out, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "df": df}


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path,
              manifest_rows: Any, write_manifest: Any, job_data: Any) -> dict[str, Any]:
    manifest = write_manifest(data_dir, "good.jsonl", manifest_rows(include_bad=False))
    out = tmp_path_factory.mktemp("jsonl") / "out"
    spec = build_spec(job_data(tiny_model, manifest, out, resources={"batch_size": 1},
                               output={"embed_images": True, "sheet_items": 0}))
    summary = run_job(spec)
    return {"out": out, "summary": summary, "df": pd.read_parquet(out / "index")}


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path,
                manifest_rows: Any, write_manifest: Any, job_data: Any) -> dict[str, Any]:
    manifest = write_manifest(data_dir, "good.parquet", manifest_rows(include_bad=False))
    out = tmp_path_factory.mktemp("parquet") / "out"
    spec = build_spec(job_data(tiny_model, manifest, out, resources={"actors": 2, "num_cpus": 0.5},
                               output={"sheet_items": 0}))
    summary = run_job(spec)
    return {"out": out, "summary": summary, "df": pd.read_parquet(out / "index")}


def test_csv_run_exit_code_and_summary(csv_run: dict[str, Any]) -> None:
    assert csv_run["code"] == 3, csv_run["stderr"]
    text = csv_run["stdout"]
    assert "outputs written" in text and "items/s" in text
    assert "failed: 1 item(s): missing guide" in text
    assert "failed: 1 item(s): bad guide" in text
    assert "failed: 1 item(s): bad override" in text


def test_row_counts_and_columns(csv_run: dict[str, Any], manifest_rows: Any) -> None:
    df = csv_run["df"]
    assert list(df.columns) == INDEX_COLUMNS
    # 2 samples per item, except "override" (3); error items still get one row per sample.
    assert len(df) == 2 * 8 + 3
    assert df.groupby("id").size().to_dict()["override"] == 3
    assert not df.duplicated(["id", "sample"]).any()
    ok = df[df.status == "ok"]
    assert set(ok.id) == set(GOOD_ITEMS) | {"../weird/Ünïcode id"}
    assert (ok.sampler == "ancestral").all() and (ok.passes == 1).all() and (ok.steps == 3).all()
    assert (ok.model_calls == 3).all()
    assert (ok.width == SIZE).all() and (ok.height == SIZE).all()
    assert ok.model.str.match(r"^[\w.-]+@sha256:[0-9a-f]{64}$").all()
    assert ok.error.isna().all() and ok.duration_ms.gt(0).all()
    assert ok.faithfulness_l2.between(0, 1).all()
    # As the manifest gave them (relative to its folder): never this machine's absolute path
    given = {r["id"]: r["guide"] for r in manifest_rows(include_bad=True)}
    assert all(row.guide == given[row.id] for row in ok.itertuples()) and not ok.guide.str.startswith("/").any()
    assert (ok.t0[ok.id != "override"] == 0.1).all()
    for row in ok.itertuples():
        image = Image.open(csv_run["out"] / row.image)
        assert image.size == (SIZE, SIZE) and image.mode == "L"
        assert row.image.startswith(f"images/{row.shard}/") and "/" not in row.image[len(f"images/{row.shard}/"):]


def test_error_rows_name_their_reason(csv_run: dict[str, Any]) -> None:
    df = csv_run["df"].set_index(["id", "sample"])
    assert df.loc[("missing", 0), "error"].startswith("missing guide:")
    assert df.loc[("corrupt", 1), "error"].startswith("bad guide:")
    assert df.loc[("bad-t0", 0), "error"].startswith("bad override: t0=2.0")
    bad = df[df.status == "error"]
    assert bad.image.isna().all() and bad.width.isna().all()


def test_per_item_overrides(csv_run: dict[str, Any]) -> None:
    from sdedit_kernel import seed_for

    df = csv_run["df"]
    row = df[(df.id == "override")].sort_values("sample")
    assert list(row["sample"]) == [0, 1, 2]
    assert (row.t0 == 0.2).all() and (row.seed == 7).all()
    assert list(row.generator_seed) == [seed_for(7, "override", s) for s in range(3)]
    plain = df[df.id == "plain-0"].sort_values("sample")
    assert list(plain.generator_seed) == [seed_for(11, "plain-0", s) for s in range(2)]


def test_kept_region_is_preserved_exactly(csv_run: dict[str, Any], data_dir: Path) -> None:
    df = csv_run["df"]
    guide = np.asarray(Image.open(data_dir / "img" / "g3.png"))
    masked = df[df.id == "masked"].sort_values("sample")
    assert list(masked["sample"]) == [0, 1] and (masked.status == "ok").all(), masked.error.tolist()
    for row in masked.itertuples():
        out = np.asarray(Image.open(csv_run["out"] / row.image))
        np.testing.assert_array_equal(out[:, : SIZE // 2], guide[:, : SIZE // 2])  # mask 0 / grey 100
        assert not np.array_equal(out[:, SIZE // 2:], guide[:, SIZE // 2:])  # edited half changed


def test_index_reads_with_pyarrow_and_pandas(csv_run: dict[str, Any]) -> None:
    table = pq.read_table(csv_run["out"] / "index")
    assert table.num_rows == len(csv_run["df"])
    assert table.schema.field("sample").type == "int32" and table.schema.field("mask").type == "string"
    df = table.to_pandas()
    assert df.loc[df.id == "masked", "mask"].iloc[0].endswith("m3.png")
    # Integer columns stay integers in pandas, error rows' nulls included (pandas metadata in the schema).
    errors = df[df.status == "error"]
    assert len(errors) and str(df.width.dtype) == "Int32" and errors.width.isna().all()
    assert str(df.generator_seed.dtype) == "Int64" and not df.generator_seed.isna().any()


def test_index_reads_with_duckdb_and_polars(csv_run: dict[str, Any]) -> None:
    import duckdb
    import polars as pl

    files = str(csv_run["out"] / "index" / "*.parquet")
    counts = dict(duckdb.sql(f"select status, count(*) from '{files}' group by status").fetchall())
    assert counts == csv_run["df"].status.value_counts().to_dict()
    widths = duckdb.sql(f"select distinct typeof(width), typeof(sample) from '{files}'").fetchall()
    assert widths == [("INTEGER", "INTEGER")]
    frame = pl.read_parquet(files)
    assert frame.height == len(csv_run["df"]) and frame.schema["width"] == pl.Int32
    errors = int((csv_run["df"].status == "error").sum())
    assert frame.filter(pl.col("status") == "error")["width"].null_count() == errors
    assert frame.filter(pl.col("status") == "ok")["image"].str.starts_with("images/").all()


def test_dataset_card_gives_datasets_the_index_with_images(csv_run: dict[str, Any], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Image files (embed_images off): ``load_dataset(OUT)`` gives every index row, error rows too, with
    ``image`` an Image feature that opens from any working directory; the sheet is not a row."""
    out, df = csv_run["out"], csv_run["df"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "path: images/*/*" in card
    meta = pd.read_parquet(out / "images" / "all-00000" / "metadata.parquet")
    assert len(meta) == len(df) and (meta.file_name.dropna() == meta.image.dropna().str.split("/").str[-1]).all()
    datasets = pytest.importorskip("datasets")
    monkeypatch.chdir(tmp_path)  # the paths must not depend on where the reader runs
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(df) and "faithfulness_l2" in ds.column_names and "file_name" not in ds.column_names
    assert type(ds.features["image"]).__name__ == "Image"
    rows = {(r["id"], r["sample"]): r for r in ds}
    for row in df.itertuples():
        image = rows[(row.id, row.sample)]["image"]
        if row.status == "ok":
            assert image.size == (row.width, row.height)
        else:
            assert image is None


def test_dataset_card_of_embedded_images_points_at_the_index(jsonl_run: dict[str, Any], tmp_path: Path) -> None:
    out = jsonl_run["out"]
    assert "path: index/*.parquet" in (out / "README.md").read_text()
    assert not list((out / "images").glob("*/metadata.parquet"))  # the index carries the images itself
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(jsonl_run["df"]) and type(ds.features["image"]).__name__ == "Image"
    assert ds[0]["image"].size[0] > 0


def test_unsafe_ids_get_safe_names(csv_run: dict[str, Any]) -> None:
    df = csv_run["df"]
    names = df[df.id == "../weird/Ünïcode id"].image
    assert all(n.startswith("images/all-00000/weird_Unicode_id-") for n in names)
    assert all((csv_run["out"] / n).resolve().parent == (csv_run["out"] / "images" / "all-00000").resolve()
               for n in names)


def test_job_json_and_outputs_hold_no_secret(csv_run: dict[str, Any]) -> None:
    out = csv_run["out"]
    record = json.loads((out / "job.json").read_text())
    assert record["spec"]["storage_options"]["token"] == "***redacted***"
    assert record["spec"]["output"]["storage_options"]["password"] == "***redacted***"
    assert record["summary"]["outputs_ok"] == 13 and record["versions"]["ray"]
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in csv_run["stdout"] + csv_run["stderr"]


def test_contact_sheet_written_and_redrawn(csv_run: dict[str, Any]) -> None:
    sheet = csv_run["out"] / "sheet.png"
    first = Image.open(sheet)
    assert first.size[0] > 4 * 100 and first.size[1] > 4 * 100  # 4 items: label, guide, mask, 2 samples
    sheet.unlink()
    assert main(["sheet", str(csv_run["out"]), "--items", "2"]) == 0
    assert Image.open(sheet).size[1] < first.size[1]


def test_jsonl_run_embeds_images_for_hugging_face(jsonl_run: dict[str, Any]) -> None:
    assert jsonl_run["summary"].exit_code == 0
    table = pq.read_table(jsonl_run["out"] / "index")
    assert table.schema.field("image").type.names == ["bytes", "path"]
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and set(features) == set(INDEX_COLUMNS)
    for image in table.column("image").to_pylist():
        assert (jsonl_run["out"] / image["path"]).read_bytes() == image["bytes"]


def test_batch_size_1_and_4_give_identical_images(csv_run: dict[str, Any], jsonl_run: dict[str, Any]) -> None:
    a, b = _images(csv_run["out"], csv_run["df"]), _images(jsonl_run["out"], jsonl_run["df"])
    assert len(b) == 2 * 4 + 3
    for key, pixels in b.items():
        np.testing.assert_array_equal(pixels, a[key], err_msg=str(key))


def test_one_and_two_actors_give_identical_images(csv_run: dict[str, Any],
                                                  parquet_run: dict[str, Any]) -> None:
    assert parquet_run["summary"].exit_code == 0
    a, c = _images(csv_run["out"], csv_run["df"]), _images(parquet_run["out"], parquet_run["df"])
    assert len(c) == 2 * 4 + 3
    for key, pixels in c.items():
        np.testing.assert_array_equal(pixels, a[key], err_msg=str(key))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path,
              manifest_rows: Any, write_manifest: Any, job_data: Any) -> dict[str, Any]:
    """The Parquet run's job on the local executor (no Ray), into another output."""
    manifest = write_manifest(data_dir, "good.parquet", manifest_rows(include_bad=False))
    out = tmp_path_factory.mktemp("local") / "out"
    spec = build_spec(job_data(tiny_model, manifest, out, resources={"executor": "local"},
                               output={"sheet_items": 0}))
    summary = run_job(spec)
    return {"out": out, "summary": summary, "df": pd.read_parquet(out / "index")}


def test_local_executor_writes_what_ray_writes(parquet_run: dict[str, Any], local_run: dict[str, Any]) -> None:
    """Same stage functions, same outputs: the image files byte for byte, the index rows value for value
    (but the model's timing), the shard records but for the run's own fields."""
    ray_out, local_out = parquet_run["out"], local_run["out"]
    assert local_run["summary"].exit_code == 0 and local_run["summary"].outputs == parquet_run["summary"].outputs
    assert _image_files(local_out) == _image_files(ray_out) and len(_image_files(ray_out)) == 2 * 4 + 3
    timing = ["duration_ms"]
    pd.testing.assert_frame_equal(local_run["df"].drop(columns=timing), parquet_run["df"].drop(columns=timing))
    own = {"run_id", "finished_at", "model_seconds_new"}
    records = [{k: v for k, v in json.loads(p.read_text()).items() if k not in own}
               for p in (local_out / "shards" / "good-00000.json", ray_out / "shards" / "good-00000.json")]
    assert records[0] == records[1]
    assert json.loads((local_out / "job.json").read_text())["executor"] == "local"
    assert json.loads((ray_out / "job.json").read_text())["executor"] == "ray"


def test_autoscaling_pool_writes_what_a_fixed_pool_writes(tmp_path: Path, parquet_run: dict[str, Any],
                                                          tiny_model: Path, data_dir: Path, manifest_rows: Any,
                                                          write_manifest: Any, job_data: Any) -> None:
    """The Parquet run's job with ``actors: {min: 1, max: 2}`` (the pool may grow while it runs): every
    output once, the same bytes as the fixed pool of two."""
    manifest = write_manifest(data_dir, "good.parquet", manifest_rows(include_bad=False))
    out = tmp_path / "out"
    spec = build_spec(job_data(tiny_model, manifest, out, resources={"actors": {"min": 1, "max": 2}, "num_cpus": 0.5,
                                                                    "batch_size": 2},
                               output={"sheet_items": 0}))
    summary = run_job(spec)
    assert summary.exit_code == 0 and summary.outputs == parquet_run["summary"].outputs
    assert _image_files(out) == _image_files(parquet_run["out"])
    df = pd.read_parquet(out / "index")
    assert not df.duplicated(["id", "t0", "sample"]).any() and len(df) == len(parquet_run["df"])


def _image_files(out: Path) -> dict[str, bytes]:
    """The output's image files by path relative to OUT, with their bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}
