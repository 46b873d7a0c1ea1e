"""The local executor (pipeline.local): a whole job in this process, no Ray.

It runs the Ray path's own stage functions, so what it writes must be what a Ray run writes (that
comparison is in test_end_to_end.py, next to the Ray runs); here: when ``auto`` picks it, error rows,
a run that dies inside a shard and its resume, a grown manifest, WebDataset output, and the command
line without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import pipeline.finalize
from pipeline.jobfile import SpecError, build_spec
from pipeline.local import LOCAL_MAX_OUTPUTS, choose_executor
from pipeline.run import run_job

REPO = Path(__file__).resolve().parents[2]


def _local(job_data: Any, model: Path, manifest: Path, out: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    data = job_data(model, manifest, out, **sections)
    data["resources"]["executor"] = "local"
    return data


def _manifest(folder: Path, items: range, name: str = "m.csv") -> Path:
    path = folder / name
    path.write_text("id,guide\n" + "\n".join(f"item-{i:02d},img/g{i % 2}.png" for i in items) + "\n")
    return path


def _images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


def test_auto_is_local_only_when_nothing_asks_for_ray(tiny_model: Path, job_data: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def spec(**resources: Any) -> Any:
        return build_spec(job_data(tiny_model, "m.csv", "out", resources=resources))

    assert choose_executor(spec(), 96, ray_connected=False) == "local"
    assert choose_executor(spec(), LOCAL_MAX_OUTPUTS, ray_connected=False) == "local"
    assert choose_executor(spec(), LOCAL_MAX_OUTPUTS + 1, ray_connected=False) == "ray"  # long jobs: crash isolation
    assert choose_executor(spec(), 96, ray_connected=True) == "ray"  # the caller connected Ray to use it
    assert choose_executor(spec(), 96, ray_connected=False, address="auto") == "ray"
    assert choose_executor(spec(actors=2), 96, ray_connected=False) == "ray"
    assert choose_executor(spec(actors={"min": 1, "max": 3}), 96, ray_connected=False) == "ray"
    assert choose_executor(spec(executor="ray"), 1, ray_connected=False) == "ray"
    assert choose_executor(spec(executor="local"), 10**7, ray_connected=True, address="auto") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert choose_executor(spec(), 96, ray_connected=False) == "ray"


def test_local_runs_one_model(tiny_model: Path, job_data: Any) -> None:
    with pytest.raises(SpecError) as caught:
        build_spec(job_data(tiny_model, "m.csv", "out", resources={"executor": "local", "actors": 2}))
    assert dict(caught.value.problems)["resources.executor"].startswith("local runs one model in this process")


def test_bad_items_become_error_rows_and_the_job_goes_on(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                         job_data: Any, manifest_rows: Any,
                                                         write_manifest: Any) -> None:
    manifest = write_manifest(data_dir, "local-all.csv", manifest_rows(include_bad=True))
    out = tmp_path / "out"
    summary = run_job(build_spec(_local(job_data, tiny_model, manifest, out)))
    index = pd.read_parquet(out / "index")
    failed = index[index.status == "error"].set_index("id").error_kind.to_dict()
    assert failed == {"missing": "missing guide", "corrupt": "bad guide", "bad-t0": "bad override"}
    assert summary.exit_code == 3 and summary.outputs == len(index)
    assert (out / "sheet.png").exists()
    record = json.loads((out / "job.json").read_text())
    assert record["executor"] == "local" and record["status"] == "finished"
    assert not index.duplicated(["id", "t0", "sample"]).any()


def test_a_run_killed_inside_a_shard_resumes_to_a_clean_runs_bytes(
        tmp_path: Path, tiny_model: Path, data_dir: Path, job_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    manifest = _manifest(folder, range(7))
    out, clean = tmp_path / "out", tmp_path / "clean"
    data = _local(job_data, tiny_model, manifest, out, input={"shard_rows": 3}, output={"if_exists": "resume"})
    finish = pipeline.finalize.finish_shard

    def dies_on_the_second(shard: Any, *args: Any) -> Any:
        if shard["name"] == "m-00001":
            raise KeyboardInterrupt  # as a killed process: this shard's images and parts are written, no record
        return finish(shard, *args)

    monkeypatch.setattr(pipeline.finalize, "finish_shard", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_job(build_spec(data))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["m-00000.json"]
    assert list((out / ".work" / "m-00001").glob("*.parquet"))
    monkeypatch.setattr(pipeline.finalize, "finish_shard", finish)
    second = run_job(build_spec(data))
    assert second.exit_code == 0 and second.outputs == 14
    run_job(build_spec(_local(job_data, tiny_model, manifest, clean, input={"shard_rows": 3})))
    assert _images(out) == _images(clean)
    index = pd.read_parquet(out / "index")
    assert len(index) == 14 and not index.duplicated(["id", "sample"]).any()
    assert not (out / ".work").exists()

    _manifest(folder, range(10))  # grown: shard 2 grows, shard 3 is new; nothing done is touched
    before = {p: (out / p).stat().st_mtime_ns for p in _images(out)}
    third = run_job(build_spec(data))
    assert third.outputs == 20 and third.resumed_outputs == 14 and third.items_run == 3
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before


def test_webdataset_output(tmp_path: Path, tiny_model: Path, data_dir: Path, job_data: Any) -> None:
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    out = tmp_path / "out"
    run_job(build_spec(_local(job_data, tiny_model, _manifest(folder, range(3)), out,
                              output={"webdataset": True, "sheet_items": 0})))
    with tarfile.open(out / "webdataset" / "m-00000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 12 and sum(n.endswith(".png") for n in names) == 6
    assert not (out / ".work").exists()


def test_shards_finished_without_image_metadata_get_it_on_resume(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                                 job_data: Any) -> None:
    """An output whose shards an older version finished (no ``images/<shard>/metadata.parquet``, no
    ``image_metadata`` in the record): a resume writes it, so ``load_dataset(OUT)`` misses no row."""
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    out = tmp_path / "out"
    data = _local(job_data, tiny_model, _manifest(folder, range(5)), out, input={"shard_rows": 3},
                  output={"if_exists": "resume", "sheet_items": 0})
    run_job(build_spec(data))
    metadata = {p.parent.name: pd.read_parquet(p) for p in (out / "images").glob("*/metadata.parquet")}
    assert sorted(metadata) == ["m-00000", "m-00001"] and sum(map(len, metadata.values())) == 10
    for record_file in (out / "shards").glob("*.json"):  # as an older version left them
        record = json.loads(record_file.read_text())
        del record["image_metadata"]
        record_file.write_text(json.dumps(record))
        (out / pipeline.finalize.image_metadata_path(record["shard"])).unlink()
    again = run_job(build_spec(data))
    assert again.resumed_outputs == 10 and again.items_run == 0
    for name, table in metadata.items():
        restored = pd.read_parquet(out / "images" / name / "metadata.parquet")
        pd.testing.assert_frame_equal(restored, table)


@pytest.mark.slow
def test_the_command_runs_a_small_job_without_ray(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                 job_data: Any) -> None:
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_data(tiny_model, _manifest(folder, range(3)), tmp_path / "out")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "pipeline", "run", str(job)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "in this process (executor local)" in done.stderr and "Ray's logs" not in done.stdout
    assert json.loads((tmp_path / "out" / "job.json").read_text())["executor"] == "local"
    refused = subprocess.run([*command, "--address", "auto", "--set", "resources.executor=local"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--address auto names a Ray cluster" in refused.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_an_output_made_on_ray_resumes_on_the_local_executor(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                            job_data: Any) -> None:
    """resources may change between runs of one OUT, the executor included: the local run finishes what
    a Ray run left (a grown manifest), touches nothing done, and equals a clean local run byte for byte."""
    folder = tmp_path / "data"
    shutil.copytree(data_dir / "img", folder / "img")
    manifest = _manifest(folder, range(7))
    out, clean = tmp_path / "out", tmp_path / "clean"
    on_ray = job_data(tiny_model, manifest, out, input={"shard_rows": 3}, output={"if_exists": "resume"},
                      resources={"executor": "ray"})
    assert run_job(build_spec(on_ray)).outputs == 14
    assert json.loads((out / "job.json").read_text())["executor"] == "ray"
    before = {p: (out / p).stat().st_mtime_ns for p in _images(out)}
    _manifest(folder, range(10))
    local = _local(job_data, tiny_model, manifest, out, input={"shard_rows": 3}, output={"if_exists": "resume"})
    resumed = run_job(build_spec(local))
    assert resumed.outputs == 20 and resumed.resumed_outputs == 14 and resumed.items_run == 3
    assert {p: (out / p).stat().st_mtime_ns for p in before} == before
    run_job(build_spec(_local(job_data, tiny_model, manifest, clean, input={"shard_rows": 3})))
    assert _images(out) == _images(clean)
    index = pd.read_parquet(out / "index")
    assert len(index) == 20 and not index.duplicated(["id", "sample"]).any()
