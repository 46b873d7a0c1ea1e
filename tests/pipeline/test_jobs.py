"""jobs/: the job files load, the Kubernetes manifests say what jobs/README.md says, and a scheduled
rerun of a finished job (``output.if_exists: resume``) writes nothing new."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.jobfile import load_spec

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"


@pytest.mark.parametrize("name", ["demo.yaml", "s3-example.yaml", "sweep.yaml", "augment.yaml",
                                  "latent-example.yaml"])
def test_job_files_load(name: str) -> None:
    spec = load_spec(JOBS / name)
    assert spec.output.uri



def test_sweep_job_and_its_pictures_in_the_readme() -> None:
    """jobs/sweep.yaml mirrors the demo at three t0; the README shows what it makes and how to tune t0."""
    sweep, demo = load_spec(JOBS / "sweep.yaml"), load_spec(JOBS / "demo.yaml")
    assert sweep.sampling.sweep and sweep.sampling.t0_values == (0.3, 0.5, 0.7)
    assert sweep.input == demo.input and sweep.model == demo.model
    readme = (REPO / "README.md").read_text()
    for picture in ("docs/sweep_sheet.png", "docs/sweep_faithfulness.png"):
        assert f"]({picture})" in readme and (REPO / picture).is_file()
    assert "sdedit tune-t0 jobs/demo.yaml --target-l2 0.2" in readme and "$ sdedit inspect out/sweep" in readme
    assert "sdedit tune-t0 jobs/demo.yaml --target-l2 0.2" in (JOBS / "README.md").read_text()

def test_scheduled_jobs_resume() -> None:
    """The files run on a schedule resume; the cron line and the CronJob never overlap two runs."""
    assert load_spec(JOBS / "s3-example.yaml").output.if_exists == "resume"
    cron = yaml.safe_load((JOBS / "kubernetes-cronjob.yaml").read_text())
    assert cron["kind"] == "CronJob" and len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    command = " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "ray job submit" in command and "-- sdedit run job.yaml" in command
    readme = (JOBS / "README.md").read_text()
    cron_time = r"^([0-9*/,-]+ ){5}"  # minute hour day month weekday
    lines = [line for line in readme.splitlines() if re.match(cron_time, line)]
    assert lines and all("sdedit run" in line and "flock -n" in line for line in lines)


def test_kuberay_rayjob() -> None:
    import ray

    job = yaml.safe_load((JOBS / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("sdedit run ")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # driver and cluster must run the same Ray
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = cluster["workerGroupSpecs"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1 and gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    job_file = load_spec(JOBS / "s3-example.yaml")
    assert job_file.resources.num_gpus == 1 and job_file.resources.actors.max == gpu["maxReplicas"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_rerun_of_a_finished_job_writes_nothing(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                                job_data: Any, manifest_rows: Any, write_manifest: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`sdedit run` twice into the same output, as a cron job would: the second run keeps every file."""
    rows = [r for r in manifest_rows(include_bad=False) if r["id"] in ("plain-0", "plain-1", "masked")]
    data = job_data(tiny_model, write_manifest(data_dir, "scheduled.csv", rows), tmp_path / "out",
                    output={"if_exists": "resume", "sheet_items": 0})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(data))

    assert main(["run", str(job)]) == 0
    images = tmp_path / "out" / "images"
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images.rglob("*.png")}
    assert len(first) == 6  # 3 items x 2 samples
    capsys.readouterr()

    assert main(["run", str(job)]) == 0
    printed = capsys.readouterr().out
    assert "6 of 6 outputs written" in printed and "resumed: 6 outputs were already done" in printed
    second = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images.rglob("*.png")}
    assert second == first  # no file added, none rewritten (a rewrite renames a new inode into place)


@pytest.mark.parametrize("name, workflow, picture", [
    ("composite.yaml", "composite", "docs/composite_sheet.png"),
    ("stroke_edit.yaml", "stroke_edit", "docs/stroke_edit_sheet.png"),
])
def test_workflow_jobs_their_samples_and_pictures(name: str, workflow: str, picture: str,
                                                   tmp_path: Path) -> None:
    """The compositing and stroke-edit job files load, every sample row builds cleanly at the bundled
    model's size, and the README shows the picture with the command that makes it."""
    import pyarrow.csv as pacsv
    from sdedit_testing import decode_settings

    from pipeline.decode import decode_batch
    from pipeline.manifest import normalize_batch

    spec = load_spec(JOBS / name)
    assert spec.model.uri == "fashion-mnist-ddpm"
    manifest = REPO / spec.input.manifest
    table = pacsv.read_csv(manifest, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    rows = decode_batch(normalize_batch(table, base=str(manifest)), decode_settings(
        height=28, width=28, t0=0.5, seed=0, samples=1, out_uri=str(tmp_path),
    )).to_pylist()
    assert rows and all(r["status"] == "ok" and r["workflow"] == workflow and r["edit_mask"] for r in rows)
    assert len(list((tmp_path / "inputs").iterdir())) == 2 * len(rows)
    readme = (REPO / "README.md").read_text()
    assert f"]({picture})" in readme and (REPO / picture).is_file() and f"sdedit run jobs/{name}" in readme


def test_augment_job_its_samples_and_picture() -> None:
    """jobs/augment.yaml names the bundled conditional model, both sample manifests give the same
    labelled items (a datasets-style Parquet, and files + label names), every row resolves against
    the model's labels, and the README shows the picture with the command that makes it."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pipeline.builtin import resolve_model_uri
    from pipeline.manifest import normalize_batch
    from sdedit_kernel import load_score_model

    spec = load_spec(JOBS / "augment.yaml")
    assert spec.model.uri == "fashion-mnist-cond" and spec.sampling.t0_mode == "cycle"
    assert spec.output.embed_images and spec.sampling.guidance_scale > 1 and spec.sampling.samples >= 2
    classes = load_score_model(resolve_model_uri(spec.model.uri)).classes
    assert classes is not None and classes.null_label == 10 and len(classes.names) == 10
    manifest = REPO / spec.input.manifest
    embedded = normalize_batch(pq.read_table(manifest), base=str(manifest), classes=classes).to_pylist()
    paths = REPO / "pipeline/assets/samples/augment/paths.csv"
    table = pacsv.read_csv(paths, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    by_path = normalize_batch(table, base=str(paths), classes=classes).to_pylist()
    assert len(embedded) == 20 and all(r["error"] is None and r["guide_bytes"] for r in embedded)
    assert [(r["id"], r["label"]) for r in embedded] == [(r["id"], r["label"]) for r in by_path]
    assert sorted({r["label"] for r in embedded}) == list(range(10))
    readme = (REPO / "README.md").read_text()
    assert "](docs/augment_sheet.png)" in readme and "sdedit run jobs/augment.yaml" in readme
    assert (REPO / "docs/augment_sheet.png").is_file()
