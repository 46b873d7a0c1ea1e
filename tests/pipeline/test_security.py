"""Security (issue 5, item 5) at the pipeline level: a malicious pickle checkpoint never runs code,
credentials never reach job.json, the index, the console, the pipeline's log or Ray's own logs.
(Output paths never leaving OUT is checked with hostile ids in test_bad_inputs.py.)
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.cli import main

pytestmark = pytest.mark.usefixtures("ray_session")
SECRET = "Zq8-never-Leak-7731"


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: str) -> None:
        self.marker = marker


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_pickle_checkpoint_never_runs(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                job_data: Any, capsys: pytest.CaptureFixture,
                                                record_outcome: Any) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil-model"
    shutil.copytree(tiny_model, evil)
    (evil / "diffusion_pytorch_model.safetensors").unlink()
    with open(evil / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"conv_in.weight": _RunsCode(str(marker))}, f)
    # the payload is real: unpickling it the unsafe way does run it
    with open(evil / "diffusion_pytorch_model.bin", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    manifest = data_dir / "one-item.csv"
    manifest.write_text("id,guide\na,img/g0.png\n")
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**job_data(tiny_model, manifest, out), "model": {"uri": str(evil)}}))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "model.uri: CheckpointError" in err and "refused: not a plain tensor checkpoint" in err
    assert not marker.exists() and not out.exists()
    record_outcome("malicious pickle checkpoint (`__reduce__` runs a shell command)", "refused before any "
                   "work, exit 2 (`refused: not a plain tensor checkpoint`); the payload never runs", 0, 0)


@pytest.mark.slow
def test_secrets_never_reach_outputs_console_or_logs(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                     job_data: Any, capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture,
                                                     record_outcome: Any) -> None:
    import ray

    manifest = data_dir / "secret-items.csv"
    manifest.write_text(
        "id,guide\nplain,img/g0.png\n"
        f"creds-in-uri,memory://reader:{SECRET}@bucket/guide.png\n"  # a credential inside a guide URI
    )
    out = tmp_path / "out"
    data = job_data(tiny_model, manifest, out, output={"sheet_items": 0})
    data["storage_options"] = {"secret": SECRET, "token": SECRET}
    data["input"]["storage_options"] = {"client_kwargs": {"aws_session_token": SECRET}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.INFO, logger="pipeline"):
        code = main(["run", str(job), "--set", f"model.storage_options={{password: {SECRET}}}"])
    console = capsys.readouterr()
    assert code == 3, console.err  # the item with the unreachable guide fails; the job runs
    df = pd.read_parquet(out / "index")
    bad = df[df.id == "creds-in-uri"].iloc[0]
    assert bad.guide == "memory://***redacted***@bucket/guide.png" and bad.error.startswith("missing guide")

    leaks = [str(p) for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks  # job.json, the index files, the images
    assert SECRET not in console.out + console.err
    assert SECRET not in caplog.text
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    ray_leaks = [p.name for p in logs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not ray_leaks, ray_leaks
    record_outcome("credentials in `storage_options` (top level, section, nested, `--set`) and in a guide "
                   "URI (`scheme://user:secret@...`)", "written as `***redacted***`; absent from job.json, "
                   "index, images, console, the pipeline log and Ray's session logs", 0, 0)
