"""``sdedit inspect OUT``: the report of a finished sweep with bad items, human-readable and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytestmark = pytest.mark.usefixtures("ray_session")
IDS = ["plain-0", "plain-1", "odd-size", "missing", "corrupt"]  # odd-size: converted (notes); 2 bad items


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path, job_data: Any,
             manifest_rows: Any, write_manifest: Any, ray_session: None) -> Path:
    rows = [r for r in manifest_rows(True) if r["id"] in IDS]
    manifest = write_manifest(data_dir, "inspect.csv", rows)
    out = tmp_path_factory.mktemp("inspect") / "out"
    summary = run_job(build_spec(job_data(tiny_model, manifest, out, sampling={"t0": [0.1, 0.3]})))
    assert summary.exit_code == 3
    return out


@pytest.mark.slow
def test_inspect_json(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (finished / "sheet.png").unlink()
    assert main(["inspect", str(finished), "--json"]) == 0
    assert not (finished / "sheet.png").exists()  # inspect writes nothing unless asked
    assert set(json.loads(capsys.readouterr().out)["files"]) == {"sweep", "plot"}
    assert main(["inspect", str(finished), "--json", "--draw"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "finished" and report["items"] == 5 and report["items_failed"] == 2
    assert (report["outputs"], report["outputs_ok"], report["outputs_failed"]) == (20, 12, 8)  # 5 x 2 t0 x 2
    assert report["failures_by_reason"] == {"missing guide": 1, "bad guide": 1}
    assert report["failure_examples"]["missing guide"]["id"] == "missing"
    assert report["t0_counts"] == {"0.10": 10, "0.30": 10}
    assert report["faithfulness_l2"]["n"] == 12 and set(report["faithfulness_l2_by_t0"]) == {"0.10", "0.30"}
    stats = report["faithfulness_l2"]
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    assert report["items_with_notes"] == 1 and report["notes"]
    assert report["sampling"]["sampler"] == ["ancestral"] and report["sampling"]["steps"] == [3]
    assert report["wall_s"] > 0 and report["outputs_per_s"] > 0
    assert set(report["files"]) == {"sheet", "sweep", "plot"} and (finished / "sheet.png").is_file()


@pytest.mark.slow
def test_inspect_text(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(finished)]) == 0
    text = capsys.readouterr().out
    assert "outputs    20 (12 ok, 8 failed) from 5 items (2 failed)" in text
    assert "failed     1 item(s): missing guide (e.g. missing:" in text and "bad guide" in text
    assert "0.10: 10   0.30: 10" in text and "sweep_faithfulness.png" in text
    assert any(line.split()[:2] == ["0.30", "6"] for line in text.splitlines())  # per-t0 faithfulness row


def test_inspect_of_a_missing_output_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "cannot inspect" in capsys.readouterr().err
