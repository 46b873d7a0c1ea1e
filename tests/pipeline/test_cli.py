"""The command line: exit codes for jobs that cannot run, sub-commands, ``python -m pipeline``."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main


def _job(tmp_path: Path, data: dict[str, Any]) -> str:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    return str(job)


def test_python_dash_m_pipeline_help() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    assert "run" in done.stdout and "validate" in done.stdout and "Exit codes" in done.stdout
    assert "inspect" in done.stdout and "tune-t0" in done.stdout


def test_fields_lists_every_dotted_name(capsys: pytest.CaptureFixture) -> None:
    assert main(["fields"]) == 0
    text = capsys.readouterr().out
    for name in ("`input.manifest`", "`sampling.t0`", "`resources.actors`", "`output.embed_images`"):
        assert name in text


def test_eval_forwards_argv_to_the_quality_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    harness = types.ModuleType("pipeline.quality.harness")
    harness.main = lambda argv: seen.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipeline.quality", types.ModuleType("pipeline.quality"))
    monkeypatch.setitem(sys.modules, "pipeline.quality.harness", harness)
    assert main(["eval", "--t0", "0.3", "x.yaml"]) == 0
    assert seen == [["--t0", "0.3", "x.yaml"]]


def test_invalid_job_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = _job(tmp_path, {"input": {"manifest": "m.csv"}, "output": {"uri": "o"},
                          "model": {"uri": "x/y"}, "sampling": {"passes": 0}})
    assert main(["run", job]) == 2
    assert "sampling.passes" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_session")
def test_duplicate_ids_and_used_output_exit_2(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                              capsys: pytest.CaptureFixture, job_data: Any) -> None:
    dup = data_dir / "dup.csv"
    dup.write_text("id,guide\na,img/g0.png\nb,img/g1.png\na,img/g1.png\n")
    out = tmp_path / "out"
    assert main(["run", _job(tmp_path, job_data(tiny_model, dup, out))]) == 2
    assert "duplicate ids 'a'" in capsys.readouterr().err
    assert not (out / "index").exists()  # nothing ran, nothing written

    (out / "images").mkdir(parents=True)
    (out / "images" / "old.png").write_bytes(b"x")
    good = data_dir / "one.csv"
    good.write_text("id,guide\na,img/g0.png\n")
    assert main(["run", _job(tmp_path, job_data(tiny_model, good, out))]) == 2
    assert "output.if_exists=overwrite" in capsys.readouterr().err
    assert (out / "images" / "old.png").exists()  # refused: left untouched


def test_sheet_of_a_missing_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sheet", str(tmp_path / "nothing")]) == 2
    assert "no contact sheet" in capsys.readouterr().err
