"""Faults with real process kills: a model actor SIGKILLed mid-batch, a model that fails to load
(in the driver, or only in the actors), and a crash between an image write and its index row.

Every case ends with the same two numbers, computed from what is on disk: outputs lost (expected
(id, sample) pairs missing an ok row and an image) and outputs duplicated (pairs with more than one
index row); both must be 0. Images must match a clean run of the same job byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import pipeline.run
from pipeline.actor import SDEditor
from pipeline.cli import main
from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]
ITEMS = 8
EXPECTED = {(f"f-{i}", s) for i in range(ITEMS) for s in range(2)}


def lost_and_duplicated(out: Path, expected: set[tuple[str, int]]) -> tuple[int, int]:
    """(outputs lost, outputs duplicated) from OUT's index and images."""
    df = pd.read_parquet(out / "index")
    ok = df[df.status == "ok"]
    done = {(r.id, r.sample) for r in ok.itertuples() if (out / r.image).is_file()}
    return len(expected - done), int(df.duplicated(["id", "sample"]).sum())


def _image_bytes(out: Path) -> dict[str, bytes]:
    """Every file under OUT/images (by name: shards hold distinct names), temporary ones included, but
    the shards' metadata.parquet (index rows for ``datasets``: their timings differ from run to run)."""
    return {p.name: p.read_bytes() for p in sorted((out / "images").rglob("*"))
            if p.is_file() and p.name != "metadata.parquet"}


@pytest.fixture(scope="module")
def fault_job(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path,
              job_data: Any) -> dict[str, Any]:
    """The job every fault replays, and its clean run (the reference bytes)."""
    manifest = data_dir / "faults.csv"
    manifest.write_text("id,guide\n" + "".join(f"f-{i},img/g{i % 2}.png\n" for i in range(ITEMS)))
    clean = tmp_path_factory.mktemp("clean") / "out"
    data = job_data(tiny_model, manifest, clean, output={"sheet_items": 0}, input={"shard_rows": 2})
    summary = run_job(build_spec(data))
    assert summary.exit_code == 0 and lost_and_duplicated(clean, EXPECTED) == (0, 0)
    return {"data": data, "clean": clean, "images": _image_bytes(clean)}


def _with_output(data: dict[str, Any], out: Path, **output: Any) -> dict[str, Any]:
    return {**data, "output": {**data["output"], "uri": str(out), **output}}


def _kill_once_editor(marker: Path, pids: Path) -> type:
    """An SDEditor that SIGKILLs its own process in the middle of its first batch (once per job).

    Defined in a function, so cloudpickle ships the class by value to the actor processes.
    """

    class KillOnceEditor(SDEditor):
        def __call__(self, batch: Any) -> Any:
            with open(pids, "a") as f:
                f.write(f"{os.getpid()}\n")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return super().__call__(batch)
            super().__call__(batch.slice(0, 1))  # part of the batch is done, nothing returned yet
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("unreachable")

    return KillOnceEditor


def test_actor_sigkilled_mid_batch_job_completes_exactly_once(
        fault_job: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        record_outcome: Any) -> None:
    marker, pids = tmp_path / "killed", tmp_path / "pids"
    monkeypatch.setattr(pipeline.run, "SDEditor", _kill_once_editor(marker, pids))
    out = tmp_path / "out"
    summary = run_job(build_spec(_with_output(fault_job["data"], out)))
    assert marker.exists(), "the actor was never killed"
    assert len(set(pids.read_text().split())) >= 2, "the killed actor was not replaced by a new process"
    lost, duplicated = lost_and_duplicated(out, EXPECTED)
    assert summary.exit_code == 0 and summary.outputs == len(EXPECTED)
    assert (lost, duplicated) == (0, 0)
    assert _image_bytes(out) == fault_job["images"]  # the retried batch made the same bytes
    record_outcome("model actor SIGKILLed mid-batch", "job completes, exit 0; Ray restarts the actor "
                   "and retries the batch; images identical to a clean run", lost, duplicated)


def _poison_editor(pids: Path, poison: str) -> type:
    """An SDEditor whose process dies (SIGKILL) whenever it edits the item ``poison``: every attempt."""

    class PoisonEditor(SDEditor):
        def __init__(self, settings: Any) -> None:
            super().__init__(settings)
            run_kernel = self.editor._run_kernel  # the kernel call of one uniform group

            def poisoned(rows: Any, results: Any, indices: list[int], t0: float) -> None:
                if any(rows[i]["id"] == poison for i in indices):
                    with open(pids, "a") as f:
                        f.write(f"{os.getpid()}\n")
                    os.kill(os.getpid(), signal.SIGKILL)
                run_kernel(rows, results, indices, t0)

            self.editor._run_kernel = poisoned

    return PoisonEditor


def test_item_that_kills_its_actor_every_time_becomes_an_error_row(
        fault_job: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        record_outcome: Any) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setattr(pipeline.run, "SDEditor", _poison_editor(pids, "f-3"))
    out = tmp_path / "out"
    data = _with_output(fault_job["data"], out)
    data["resources"] = {**data.get("resources", {}), "max_crashes_per_item": 1}
    summary = run_job(build_spec(data))
    deaths = len(pids.read_text().split())
    df = pd.read_parquet(out / "index")
    bad = df[df.id == "f-3"]
    assert set(bad.status) == {"error"} and len(bad) == 2
    assert bad.error.str.startswith("worker crash: the model process died 1 time while editing").all()
    assert deaths == 3  # the batch once, then each of f-3's two outputs alone once: bounded

    poisoned = {(i, s) for i, s in EXPECTED if i == "f-3"}
    lost, duplicated = lost_and_duplicated(out, EXPECTED - poisoned)
    assert (lost, duplicated) == (0, 0) and len(df) == len(EXPECTED)
    assert summary.exit_code == 3 and summary.failures_by_reason == {"worker crash": 1}
    good = {k: v for k, v in _image_bytes(out).items() if not k.startswith("f-3_")}
    assert good == {k: v for k, v in fault_job["images"].items() if not k.startswith("f-3_")}
    record_outcome("an item that kills its model actor's process every time (SIGKILL on each attempt)",
                   f"the batch is retried one item at a time; the item becomes an error row `worker crash` "
                   f"after resources.max_crashes_per_item=1 death ({deaths} process deaths in all); every "
                   "other output made, identical to a clean run; exit 3", lost, duplicated)


def _kill_once_writer(marker: Path) -> Any:
    """The write stage, whose task SIGKILLs its process once, just after publishing its part file."""
    from pipeline.write import write_batch

    def write_then_die(batch: Any, settings: Any) -> Any:
        result = write_batch(batch, settings)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return result
        os.kill(os.getpid(), signal.SIGKILL)

    return write_then_die


def test_write_task_sigkilled_after_publishing_is_retried_without_duplicates(
        fault_job: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        record_outcome: Any) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setattr(pipeline.run, "write_batch", _kill_once_writer(marker))
    out = tmp_path / "out"
    summary = run_job(build_spec(_with_output(fault_job["data"], out)))
    assert marker.exists(), "the write task was never killed"
    lost, duplicated = lost_and_duplicated(out, EXPECTED)
    assert summary.exit_code == 0 and (lost, duplicated) == (0, 0)
    assert _image_bytes(out) == fault_job["images"]
    record_outcome("write task SIGKILLed right after publishing its images and index part file",
                   "Ray retries the task, which replaces its own part file (named by its outputs) instead of "
                   "adding a second copy of its rows; exit 0, images identical to a clean run", lost, duplicated)


def test_crash_between_image_and_index_row_is_redone_with_identical_bytes(
        fault_job: dict[str, Any], tmp_path: Path, record_outcome: Any) -> None:
    out = tmp_path / "out"
    shutil.copytree(fault_job["clean"], out)
    # Two shards left unfinished by a crash: no record, no index file; their rows only in part files.
    one, two = (pd.read_parquet(out / "index" / f"faults-0000{k}.parquet") for k in (1, 2))
    for k in (1, 2):
        (out / "shards" / f"faults-0000{k}.json").unlink()
        (out / "index" / f"faults-0000{k}.parquet").unlink()
        (out / ".work" / f"faults-0000{k}").mkdir(parents=True)
    kept = one[one.id == "f-2"]  # f-3's images stay: written, but the crash came before its rows
    kept.to_parquet(out / ".work" / "faults-00001" / "old-a.parquet")
    part = fault_job["clean"] / "index" / "faults-00002.parquet"  # and a truncated part file
    (out / ".work" / "faults-00002" / "old-b.parquet").write_bytes(part.read_bytes()[:100])
    (out / "images" / "faults-00001" / ".f-2_s0.png.0badc0de.tmp").write_bytes(b"half an image")
    inodes = {p.name: p.stat().st_ino for p in (out / "images").rglob("*.png")}

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_with_output(fault_job["data"], out)))
    assert main(["run", str(job), "--resume"]) == 0  # the same command, plus --resume
    summary = json.loads((out / "job.json").read_text())["summary"]
    redone = {Path(p).name for p in pd.concat([one[one.id == "f-3"], two]).image}
    assert summary["resumed_outputs"] == len(EXPECTED) - len(redone)
    lost, duplicated = lost_and_duplicated(out, EXPECTED)
    assert (lost, duplicated) == (0, 0)
    assert _image_bytes(out) == fault_job["images"]  # identical bytes, and no temporary file left
    rewritten = {p.name for p in (out / "images").rglob("*.png") if p.stat().st_ino != inodes[p.name]}
    assert rewritten == redone  # the orphans were made again; the indexed images were kept
    assert not (out / ".work").exists() and len(list((out / "shards").iterdir())) == ITEMS // 2
    record_outcome("crash inside shards: orphan images without rows, a truncated part file, a leftover "
                   "temporary file", "resume redoes exactly the outputs without rows, with identical bytes; "
                   "finished shards untouched; temporary file removed; exit 0", lost, duplicated)


def test_resume_and_overwrite_flags(tmp_path: Path, fault_job: dict[str, Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(pipeline.run, "run_job", lambda spec, **_: seen.append(spec.output.if_exists))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(fault_job["data"]))
    for flag in ("--resume", "--overwrite"):
        with pytest.raises(AttributeError):  # the stub returns no summary; the spec is what counts
            main(["run", str(job), flag])
    assert seen == ["resume", "overwrite"]
    with pytest.raises(SystemExit):
        main(["run", str(job), "--resume", "--overwrite"])


def test_index_files_appear_whole(fault_job: dict[str, Any]) -> None:
    """The index is published by rename: no temporary or partial file is left in OUT/index."""
    names = [p.name for p in (fault_job["clean"] / "index").iterdir()]
    assert sorted(names) == [f"faults-{k:05d}.parquet" for k in range(ITEMS // 2)]  # a file per shard
    assert sum(len(pd.read_parquet(fault_job["clean"] / "index" / n)) for n in names) == len(EXPECTED)


def _broken_in_actor_editor() -> type:
    class BrokenEditor(SDEditor):
        def __init__(self, settings: Any) -> None:
            raise RuntimeError("CUDA error: no device available on this worker")

    return BrokenEditor


def test_model_that_fails_to_load_in_the_actors_stops_the_job(
        fault_job: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, record_outcome: Any) -> None:
    monkeypatch.setattr(pipeline.run, "SDEditor", _broken_in_actor_editor())
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_with_output(fault_job["data"], out)))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "the job failed" in err and "no device available" in err
    written = [*out.glob("images/*"), *out.glob("index/*.parquet")]
    assert not written, written
    record_outcome("model loads in the driver but fails in the actors", "job stops, exit 2, the "
                   "loader's reason printed; no output written", 0, 0)


def test_model_that_fails_to_load_stops_before_any_work(
        fault_job: dict[str, Any], tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture,
        record_outcome: Any) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)  # a half-copied file
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    data = _with_output(fault_job["data"], out)
    job.write_text(yaml.safe_dump({**data, "model": {"uri": str(broken)}}))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "cannot run" in err and "model.uri: CheckpointError" in err and "safetensors" in err
    assert not out.exists()  # stopped before any work: nothing written, not even job.json
    record_outcome("model that fails to load (corrupt weights file)", "stops before any work, exit 2, "
                   "`model.uri: CheckpointError: ...` names the file; nothing written", 0, 0)
