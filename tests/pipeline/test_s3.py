"""Cloud storage end to end: manifest, guides and outputs on S3 (moto's server on loopback, via s3fs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.index import read_index
from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

KEY, SECRET = "AKIAMOTOTESTKEY", "moto-secret-value-1234"


@pytest.fixture(scope="module")
def s3_endpoint(free_port: Any) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.mark.usefixtures("ray_session")
def test_s3_in_and_out(s3_endpoint: str, tiny_model: Path, data_dir: Path, job_data: Any,
                       manifest_rows: Any, write_manifest: Any, tmp_path: Path) -> None:
    import s3fs

    options = {"key": KEY, "secret": SECRET, "endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("sdedit")
    for name in ("g0.png", "g3.png", "m3.png"):
        fs.put(str(data_dir / "img" / name), f"sdedit/data/img/{name}")
    rows = [r for r in manifest_rows(include_bad=False) if r["id"] in ("plain-0", "masked")]
    fs.put(str(write_manifest(tmp_path, "s3.parquet", rows)), "sdedit/data/manifest.parquet")

    spec = build_spec(job_data(tiny_model, "s3://sdedit/data/manifest.parquet", "s3://sdedit/out",
                               storage_options=options, output={"format": "jpeg", "sheet_items": 2}))
    summary = run_job(spec)
    assert summary.exit_code == 0 and summary.outputs_ok == 4

    index = read_index("s3://sdedit/out", options).to_pylist()
    assert {r["guide"] for r in index} == {"s3://sdedit/data/img/g0.png", "s3://sdedit/data/img/g3.png"}
    for row in index:
        assert fs.exists(f"sdedit/out/{row['image']}") and row["image"].endswith(".jpg")
    assert fs.exists("sdedit/out/sheet.png")
    record = fs.cat("sdedit/out/job.json").decode()
    assert KEY not in record and SECRET not in record
    assert json.loads(record)["spec"]["storage_options"]["endpoint_url"] == s3_endpoint
