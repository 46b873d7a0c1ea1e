"""One writer per output: a second run is refused with who holds OUT; a killed run's lock is taken over.

Holders are real processes (a child Python that takes the lock and sleeps), killed with SIGKILL as a
crash would, on local disk and on S3 (moto's server on loopback).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.lock import LOCK_FILE, OutputLock, OutputLockedError

REPO = Path(__file__).resolve().parents[2]


def _holder(out_uri: str, options: dict[str, str] | None = None) -> subprocess.Popen:
    """A child process that takes the lock on ``out_uri``, says so, and sleeps until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pipeline.lock import OutputLock
        lock = OutputLock({out_uri!r}, {options!r}, heartbeat_s=0.5)
        lock.acquire()
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "held", f"holder did not take the lock (exit {proc.poll()})"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_run_is_refused_then_takes_over_after_a_kill(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    holder = _holder(out)
    try:
        message = rf"in use by another run: host \S+, pid {holder.pid}, started 20"
        with pytest.raises(OutputLockedError, match=message):
            OutputLock(out).acquire()
        record = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
        assert record["pid"] == holder.pid and record["run_id"]
    finally:
        _kill(holder)
    with OutputLock(out) as lock:  # the holder's process is gone: its lock is stale
        assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["run_id"] == lock.record["run_id"]
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # given back at the end


def test_simultaneous_local_starts_one_wins(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first, second = OutputLock(out), OutputLock(out)
    first.acquire()
    try:
        with pytest.raises(OutputLockedError):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_a_lock_whose_heartbeat_stopped_is_stale_from_another_host(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old = {"host": "elsewhere", "pid": 1, "run_id": "abc", "started_at": "2026-01-01T00:00:00+00:00",
           "heartbeat_at": time.time() - 10}
    (out / LOCK_FILE).write_text(json.dumps(old))
    with pytest.raises(OutputLockedError, match="host elsewhere"):
        OutputLock(str(out), stale_after_s=60).acquire()
    old["heartbeat_at"] = time.time() - 120
    (out / LOCK_FILE).write_text(json.dumps(old))
    with OutputLock(str(out), stale_after_s=60):
        assert json.loads((out / LOCK_FILE).read_text())["host"] != "elsewhere"


def test_on_s3_a_second_run_is_refused_and_a_killed_runs_lock_taken_over(
        s3: tuple[Any, dict[str, str], str]) -> None:
    fs, options, bucket = s3
    out = f"s3://{bucket}/out"
    holder = _holder(out, options)
    try:
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            OutputLock(out, options).acquire()
    finally:
        _kill(holder)
    # Same host: the dead pid makes it stale at once; the new holder's record is what S3 now holds.
    with OutputLock(out, options) as lock:
        fs.invalidate_cache()
        assert json.loads(fs.cat(f"{bucket}/out/{LOCK_FILE}"))["run_id"] == lock.record["run_id"]
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out/{LOCK_FILE}")


@pytest.mark.slow
def test_two_sdedit_runs_into_one_output(tmp_path: Path, tiny_model: Path, data_dir: Path, job_data: Any,
                                         manifest_rows: Any, write_manifest: Any) -> None:
    """Two `sdedit run` processes at once, same OUT, both resume: one makes the outputs, the other is
    refused at start (exit 2, naming the holder); the index lists every output once."""
    import pandas as pd
    import yaml

    rows = [r for r in manifest_rows(include_bad=False) if r["id"] in ("plain-0", "plain-1")]
    data = job_data(tiny_model, write_manifest(data_dir, "two-runs.csv", rows), tmp_path / "out",
                    output={"if_exists": "resume", "sheet_items": 0}, sampling={"steps": 30},
                    resources={"executor": "ray"})  # a Ray run holds the lock for seconds: time for the second
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pipeline", "run", str(job)]
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out" / LOCK_FILE).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out_first, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out_first[-2000:]
    assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr[-2000:]
    index = pd.read_parquet(tmp_path / "out" / "index")
    assert len(index) == 4 and not index.duplicated(["id", "t0", "sample"]).any()


@pytest.mark.slow
def test_two_sdedit_runs_on_one_machine_are_independent(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                        job_data: Any, manifest_rows: Any,
                                                        write_manifest: Any) -> None:
    """Without --address each `sdedit run` on Ray starts its own private instance: two at once, into two
    outputs, both finish, and neither joins (or dies with) the other's instance; both consoles quiet."""
    import yaml

    rows = [r for r in manifest_rows(include_bad=False) if r["id"] in ("plain-0", "plain-1")]
    manifest = write_manifest(data_dir, "independent.csv", rows)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    procs = []
    for name in ("a", "b"):
        job = tmp_path / f"{name}.yaml"
        job.write_text(yaml.safe_dump(job_data(tiny_model, manifest, tmp_path / f"out-{name}",
                                               output={"sheet_items": 0}, sampling={"steps": 20},
                                               resources={"executor": "ray"})))
        procs.append(subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-1500:] for o in outputs]
    sessions = {line.split("Ray's logs: ")[1].split()[0] for o in outputs for line in o.splitlines()
                if "Ray's logs: " in line}
    assert len(sessions) == 2  # two Ray instances, one each
    # The console is our own lines only: no Ray INFO lines, and not the core worker's error-level
    # "has constructor arguments in the object store" line (ray-project/ray#53727), whose cause the
    # model pool removed (docs/reliability.md).
    noise = [line for o in outputs for line in o.splitlines() if line and not line.startswith(("sdedit", " "))]
    assert noise == [], noise
