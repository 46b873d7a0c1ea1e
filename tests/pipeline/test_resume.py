"""Resume after a real crash: kill a running ``sdedit run`` process, rerun with if_exists=resume.

The driver process is SIGKILLed part-way, inside a shard (it runs as a job on the shared Ray
instance, which then reaps its actors and tasks). The rerun must keep what the finished shards and
the unfinished shard's parts list as ok, retry the rest, and leave exactly one ok row and one image
per (id, sample).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytestmark = pytest.mark.usefixtures("ray_session")
ITEMS = 24


def _manifest(folder: Path) -> Path:
    path = folder / "many.csv"
    lines = ["id,guide"] + [f"item-{i:02d},img/g{i % 2}.png" for i in range(ITEMS)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_kill_then_resume(tmp_path: Path, tiny_model: Path, data_dir: Path, job_data: Any,
                          record_outcome: Any) -> None:
    import ray

    out = tmp_path / "out"
    data = job_data(tiny_model, _manifest(data_dir), out, sampling={"steps": 300, "samples": 1},
                    resources={"batch_size": 1}, output={"sheet_items": 0}, input={"shard_rows": 8})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--address", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            # killed inside a shard: the first shard finished, some outputs of the next written
            if list((out / "shards").glob("*.json")) and list((out / ".work").glob("*/*.parquet")):
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    written = [*(out / "index").glob("*.parquet"), *(out / ".work").glob("*/*.parquet")]
    before = pd.concat([pd.read_parquet(p) for p in written]) if written else pd.DataFrame()
    assert 9 <= len(before) < ITEMS, "the run was not killed inside a shard"

    with pytest.raises(ValueError, match="sampling.t0"):  # a resume must not mix settings
        run_job(build_spec({**data, "sampling": {**data["sampling"], "t0": 0.3},
                            "output": {**data["output"], "if_exists": "resume"}}))
    summary = run_job(build_spec({**data, "output": {**data["output"], "if_exists": "resume"}}))
    after = pd.read_parquet(out / "index")
    assert summary.exit_code == 0 and summary.outputs == ITEMS
    assert summary.resumed_outputs == len(before[before.status == "ok"].drop_duplicates(["id", "sample"]))
    assert sorted(after.id) == [f"item-{i:02d}" for i in range(ITEMS)] and (after.status == "ok").all()
    assert sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*.png")) == sorted(after.image)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"many-{k:05d}.json" for k in range(3)]
    assert not (out / ".work").exists()
    lost = ITEMS - after[after.status == "ok"].id.nunique()
    duplicated = int(after.duplicated(["id", "sample"]).sum())
    record_outcome("driver (`sdedit run`) SIGKILLed mid-job, then rerun with `output.if_exists: resume`",
                   f"the rerun keeps the {summary.resumed_outputs} indexed outputs and makes the rest; "
                   "exit 0 (a rerun with other settings is refused, exit 2)", lost, duplicated)
    kept = before[before.status == "ok"].set_index("id")
    for row in after[after.id.isin(kept.index)].itertuples():  # the earlier rows were kept as they were
        assert row.seed == kept.loc[row.id, "seed"] and row.duration_ms == kept.loc[row.id, "duration_ms"]


def test_resume_refuses_other_weights(tmp_path: Path, tiny_model: Path, job_data: Any) -> None:
    from pipeline.outdir import write_job_record
    from pipeline.resume import ResumeError, plan_work

    spec = build_spec(job_data(tiny_model, tmp_path / "m.csv", tmp_path / "out",
                               output={"if_exists": "resume"}))
    (tmp_path / "out" / "index").mkdir(parents=True)
    pd.DataFrame({"id": ["a"]}).to_parquet(tmp_path / "out" / "index" / "part.parquet")
    write_job_record(spec, {"model": {"label": "tiny@sha256:old"}})
    with pytest.raises(ResumeError, match="the model changed"):
        plan_work(spec, [], "tiny@sha256:new")
