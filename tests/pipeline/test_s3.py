"""Cloud storage end to end: manifests, guides, masks, the checkpoint and all outputs on S3.

The endpoint is moto's S3 server, a real HTTP server bound to 127.0.0.1 on a free port, started once
for the test session and stopped at its end; the pipeline reaches it through s3fs exactly as a user
reaches S3 or MinIO: ``storage_options`` with ``endpoint_url`` and credentials in the job spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.index import read_index
from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

KEY, SECRET = "AKIAMOTOTESTKEY", "moto-secret-value-1234"
REPO = Path(__file__).resolve().parents[2]


def _keys(fs: Any, prefix: str) -> list[str]:
    fs.invalidate_cache()  # this process's s3fs caches listings; the writers were other processes
    return sorted(fs.find(prefix))


def _images(fs: Any, prefix: str) -> list[str]:
    """The image objects under ``prefix``: each shard's metadata.parquet (for ``datasets``) left out."""
    return [k for k in _keys(fs, prefix) if not k.endswith("/metadata.parquet")]


def _index(fs: Any, out_uri: str, options: dict[str, str]) -> Any:
    fs.invalidate_cache()
    return read_index(out_uri, options).to_pandas()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_s3_in_and_out(s3: tuple[Any, dict[str, str], str], tiny_model: Path, data_dir: Path, job_data: Any,
                       manifest_rows: Any, write_manifest: Any, tmp_path: Path) -> None:
    fs, options, bucket = s3
    for name in ("g0.png", "g3.png", "m3.png"):
        fs.put(str(data_dir / "img" / name), f"{bucket}/data/img/{name}")
    rows = [r for r in manifest_rows(include_bad=False) if r["id"] in ("plain-0", "masked")]
    fs.put(str(write_manifest(tmp_path, "s3.parquet", rows)), f"{bucket}/data/manifest.parquet")

    spec = build_spec(job_data(tiny_model, f"s3://{bucket}/data/manifest.parquet", f"s3://{bucket}/out",
                               storage_options=options, output={"format": "jpeg", "sheet_items": 2}))
    summary = run_job(spec)
    assert summary.exit_code == 0 and summary.outputs_ok == 4

    index = read_index(f"s3://{bucket}/out", options).to_pylist()
    assert {r["guide"] for r in index} == {"img/g0.png", "img/g3.png"}  # as the manifest gave them
    for row in index:
        assert fs.exists(f"{bucket}/out/{row['image']}") and row["image"].endswith(".jpg")
    assert fs.exists(f"{bucket}/out/sheet.png")
    record = fs.cat(f"{bucket}/out/job.json").decode()
    assert KEY not in record and SECRET not in record
    assert json.loads(record)["spec"]["storage_options"]["endpoint_url"] == options["endpoint_url"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_everything_on_s3_then_resume(s3: tuple[Any, dict[str, str], str], tiny_model: Path, data_dir: Path,
                                      job_data: Any, manifest_rows: Any, write_manifest: Any,
                                      tmp_path: Path) -> None:
    """Manifests (CSV, JSON Lines), guides, masks, the checkpoint folder and the outputs all on S3;
    then a resume that makes only what is missing, and a rerun that writes nothing at all."""
    fs, options, bucket = s3
    root = f"s3://{bucket}"
    for name in ("g0.png", "g1.png", "g3.png", "m3.png"):
        fs.put(str(data_dir / "img" / name), f"{bucket}/data/img/{name}")
    fs.put(str(tiny_model), f"{bucket}/models/tiny", recursive=True)
    for key in fs.find(f"{bucket}/models/tiny"):  # a public checkpoint; everything else stays private
        fs.chmod(key, acl="public-read")
    first = [r for r in manifest_rows(include_bad=False) if r["id"] in ("plain-0", "plain-1", "masked")]
    fs.put(str(write_manifest(tmp_path, "first.csv", first)), f"{bucket}/data/first.csv")
    more = [{"id": "late-0", "guide": "img/g1.png"}, {"id": "late-1", "guide": "img/g0.png", "mask": "img/m3.png"}]
    fs.put(str(write_manifest(tmp_path, "more.jsonl", more)), f"{bucket}/data/more.jsonl")

    data = job_data(
        f"{root}/models/tiny", f"{root}/data/first.csv", f"{root}/out",
        storage_options={"endpoint_url": options["endpoint_url"]},  # shared by every section
        input={"storage_options": {"key": KEY, "secret": SECRET}},
        output={"storage_options": {"key": KEY, "secret": SECRET}, "sheet_items": 0},
    )
    data["model"]["storage_options"] = {"anon": True}  # a public checkpoint: unsigned requests
    with pytest.raises(ValueError, match="input.manifest"):  # anonymous requests do reach moto's ACLs
        run_job(build_spec({**data, "input": {**data["input"], "storage_options": {"anon": True}}}))
    summary = run_job(build_spec(data))
    assert summary.exit_code == 0 and (summary.items, summary.outputs_ok) == (3, 6)
    index = _index(fs, f"{root}/out", options)
    assert index.model.str.startswith("tiny@sha256:").all()
    assert set(index[index.id == "masked"]["mask"]) == {"img/m3.png"}
    images = _images(fs, f"{bucket}/out/images")
    assert images == sorted(f"{bucket}/out/{p}" for p in index.image)
    assert f"{bucket}/out/images/first-00000/metadata.parquet" in _keys(fs, f"{bucket}/out/images")
    others = set(_keys(fs, f"{bucket}/out")) - set(images)  # no temporary or partial objects anywhere
    assert {k.rsplit("/", 1)[-1] for k in others if "/index/" not in k and "/shards/" not in k} == {
        "job.json", "README.md", "metadata.parquet"}
    assert [k.rsplit("/", 1)[-1] for k in others if "/index/" in k] == ["first-00000.parquet"]
    assert [k.rsplit("/", 1)[-1] for k in others if "/shards/" in k] == ["first-00000.json"]
    record = fs.cat(f"{bucket}/out/job.json").decode()
    assert KEY not in record and SECRET not in record

    # An interrupted run, as a resume sees it: killed inside its shard (rows in a part file, no index file,
    # no record yet) with one image lost, and a second manifest added later.
    fs.mv(f"{bucket}/out/index/first-00000.parquet", f"{bucket}/out/.work/first-00000/old-part.parquet")
    fs.rm(f"{bucket}/out/shards/first-00000.json")
    lost = f"{bucket}/out/{index[index.id == 'plain-1'].image.iloc[0]}"
    fs.rm(lost)
    kept = [k for k in images if k != lost]
    for key in kept:  # mark the outputs a resume must keep: it must not write them again
        fs.pipe(key, b"kept " + key.encode())
    resumed = {**data, "input": {**data["input"], "manifest": [f"{root}/data/first.csv", f"{root}/data/more.jsonl"]},
               "output": {**data["output"], "if_exists": "resume"}}
    summary = run_job(build_spec(resumed))
    assert summary.exit_code == 0 and (summary.items, summary.outputs, summary.outputs_ok) == (5, 10, 10)
    assert summary.resumed_outputs == 5 and summary.items_run == 3  # plain-1 (one lost sample) + 2 new
    after = _index(fs, f"{root}/out", options)
    assert not after.duplicated(["id", "sample"]).any() and (after.status == "ok").all()
    assert _images(fs, f"{bucket}/out/images") == sorted(f"{bucket}/out/{p}" for p in after.image)
    assert all(fs.cat(key) == b"kept " + key.encode() for key in kept)
    assert fs.cat(lost)[:8] == b"\x89PNG\r\n\x1a\n"  # made again

    # The scheduled rerun: everything is done, so it writes no image at all.
    for key in _images(fs, f"{bucket}/out/images"):
        fs.pipe(key, b"kept " + key.encode())
    summary = run_job(build_spec(resumed))
    assert summary.exit_code == 0 and (summary.outputs, summary.resumed_outputs, summary.items_run) == (10, 10, 0)
    final = _images(fs, f"{bucket}/out/images")
    assert len(final) == 10 and all(fs.cat(key) == b"kept " + key.encode() for key in final)
    assert len(_index(fs, f"{root}/out", options)) == 10


def test_s3_job_example_validates(s3: tuple[Any, dict[str, str], str], tiny_model: Path, data_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """jobs/s3-example.yaml, pointed at the test endpoint, passes ``sdedit validate`` (model loaded from S3)."""
    from pipeline.cli import main

    fs, options, bucket = s3
    fs.put(str(tiny_model), f"{bucket}/models/tiny", recursive=True)
    fs.put(str(data_dir / "img" / "g0.png"), f"{bucket}/data/img/g0.png")
    fs.pipe(f"{bucket}/data/manifest.csv", b"id,guide\na,img/g0.png\n")
    code = main(["validate", str(REPO / "jobs" / "s3-example.yaml"),
                 "--set", f"storage_options.endpoint_url={options['endpoint_url']}",
                 "--set", f"storage_options.key={KEY}", "--set", f"storage_options.secret={SECRET}",
                 "--set", f"input.manifest=s3://{bucket}/data/manifest.csv",
                 "--set", f"model.uri=s3://{bucket}/models/tiny", "--set", f"output.uri=s3://{bucket}/out",
                 "--set", "resources.num_gpus=0", "--set", "model.device=cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "ok: model tiny@sha256:" in printed.out and SECRET not in printed.out + printed.err


def test_gs_and_az_need_their_extras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gs:// and az:// go through the same fsspec path; without gcsfs / adlfs the job stops before any
    work (exit 2) naming the field and the package to install (the `gcs` and `azure` extras)."""
    import importlib.util

    from pipeline.cli import main

    if importlib.util.find_spec("gcsfs") or importlib.util.find_spec("adlfs"):
        pytest.skip("gcsfs or adlfs installed: nothing to report")
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{manifest: gs://bucket/m.csv}}\noutput: {{uri: {tmp_path / 'out'}}}\n"
                   "model: {uri: az://container/models/tiny}\n")
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "input.manifest: gs://bucket/m.csv" in err and "install gcsfs" in err
    assert "model.uri:" in err and "Install adlfs" in err


@pytest.mark.parametrize("source", ["environment", "profile", "none"])
def test_credentials_from_environment_or_profile(source: str, s3: tuple[Any, dict[str, str], str],
                                                 tiny_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """No credentials in the job file: s3fs takes them from AWS_* variables or an AWS profile
    (and with neither, the private bucket refuses the job: exit 2).

    Checked in the driver (``sdedit validate`` reads the manifest and the checkpoint from S3); on a
    cluster the workers need the same environment (docs/cloud.md).
    """
    import s3fs

    from pipeline.cli import main

    fs, options, bucket = s3
    fs.put(str(tiny_model), f"{bucket}/models/tiny", recursive=True)
    fs.pipe(f"{bucket}/m.csv", b"id,guide\na,g.png\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup either
    if source == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    elif source == "profile":
        credentials = tmp_path / "credentials"
        credentials.write_text(f"[sdedit]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.setenv("AWS_PROFILE", "sdedit")
    s3fs.S3FileSystem.clear_instance_cache()  # credentials are resolved when an instance is made
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{manifest: s3://{bucket}/m.csv}}\noutput: {{uri: s3://{bucket}/out}}\n"
                   f"model: {{uri: s3://{bucket}/models/tiny}}\n"
                   f"storage_options: {{endpoint_url: '{options['endpoint_url']}'}}\n")
    try:
        code, err = main(["validate", str(job)]), capsys.readouterr().err
        assert code == (2 if source == "none" else 0), err
        if source == "none":
            assert "input.manifest:" in err and "model.uri:" in err and "Credentials" in err, err
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
