"""The preparation of issue 16's GPU run: wheel staging (split, join, verify, install) and the benchmark script.

The fast tests cut a small fake wheel in two as the staging script cuts ray's, join it back, check every
sha256 and install it with pip into a --target, exactly as the device call does; and they check the
benchmark's measurement helpers and its report on a synthetic result. The slow test runs the benchmark
end to end on the CPU (``--tiny``) in a subprocess: it starts its own local Ray, like the device run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


stage = _load("stage_wheels", ROOT / "benchmarks" / "gpu" / "stage_wheels.py")
bench = _load("gpu_pipeline", ROOT / "benchmarks" / "gpu_pipeline.py")


def fake_wheel(folder: Path, name: str = "fakepkg", payload: int = 300_000) -> Path:
    """A valid pure-Python wheel with an incompressible payload, so that it is worth splitting."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{name}/payload.bin", os.urandom(payload))
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{name}/payload.bin,,\n{info}/METADATA,,\n"
                                     f"{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_split_join_verify_and_install(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "SPLIT_ABOVE", 100_000)
    src = tmp_path / stage.SRC
    big, small = fake_wheel(src, "bigpkg"), fake_wheel(src, "smallpkg", payload=1000)
    info = {"wheels": {"bigpkg": big.name, "smallpkg": small.name}, "pinned": {"bigpkg": "0.1", "smallpkg": "0.1"},
            "image_requirements": {}, "why": {"bigpkg": ["root"], "smallpkg": ["root"]}}
    plan = stage.stage(tmp_path, info, tree=1000)
    entry = next(w for w in plan["wheels"] if w["name"] == "bigpkg")
    # two parts made by `split -b`, one in each carried folder; the small wheel evens the two out
    assert [Path(p["path"]).parent.name for p in entry["parts"]] == [stage.CARRY1, stage.CARRY2]
    assert sum(p["bytes"] for p in entry["parts"]) == big.stat().st_size
    assert (tmp_path / stage.CARRY2 / small.name).is_file()  # part 1 is the larger half
    assert json.loads((tmp_path / stage.CARRY1 / stage.PLAN).read_text())["wheels"] == plan["wheels"]

    # the device side: join, check, install into a --target, then import from it
    wheels = stage.join_all(tmp_path, plan, tmp_path / "joined")
    joined = next(w for w in wheels if w.name == big.name)
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    site = tmp_path / "site"
    stage.pip_install(wheels, site)
    out = subprocess.run([sys.executable, "-c", "import bigpkg, smallpkg; print(bigpkg.VALUE + smallpkg.VALUE)"],
                         env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "84"


def test_join_refuses_a_corrupt_or_missing_part(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "SPLIT_ABOVE", 100_000)
    big = fake_wheel(tmp_path / stage.SRC, "bigpkg")
    plan = stage.stage(tmp_path, {"wheels": {"bigpkg": big.name}, "pinned": {"bigpkg": "0.1"},
                                  "image_requirements": {}, "why": {"bigpkg": ["root"]}}, tree=0)
    part2 = tmp_path / plan["wheels"][0]["parts"][1]["path"]
    data = bytearray(part2.read_bytes())
    data[10] ^= 0xFF
    part2.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="corrupt part"):
        stage.join_all(tmp_path, plan, tmp_path / "joined")
    part2.unlink()  # the machine went cold between the two transfers
    with pytest.raises(SystemExit, match="back-to-back"):
        stage.join_all(tmp_path, plan, tmp_path / "joined")


def test_markers_and_the_image_list():
    reqs = ["numpy>=1.20; extra == 'data'", "py-spy>=0.4; python_version >= '3.12' and extra == 'default'",
            "click>=7.0", "foo; python_version < '3.8'"]
    names = [r.name for r in stage.needed(reqs, {"data"})]
    assert names == ["numpy", "click"]
    assert {"torch", "pyarrow", "pandas", "fsspec", "pillow", "pyyaml", "nvidia-ml-py"} <= stage.IMAGE
    assert not {"ray", "pydantic", "pydantic-core", "diffusers", "jsonschema"} & stage.IMAGE


def test_device_commands_fit_the_tool():
    calls = stage.device_commands()
    assert [c["carry"] for c in calls] == [[stage.CARRY1], [stage.CARRY2]]
    for c in calls:
        assert len(c["command"]) <= 2000 and c["timeout_s"] <= 600
    assert "install" in calls[1]["command"] and "benchmarks/gpu_pipeline.py" in calls[1]["command"]
    ignored = (ROOT / ".gitignore").read_text()
    assert all(f"/{folder}/" in ignored for folder in (stage.SRC, stage.CARRY1, stage.CARRY2))


def test_steady_state_helpers():
    ends, sizes = [10.0, 12.0, 14.0, 16.0], [8, 8, 8, 8]
    times = bench.staircase(ends, sizes)
    assert len(times) == 32
    assert bench.steady_rate(times, 8) == pytest.approx(24 / 6)  # batches 2..4 over the time after batch 1
    assert bench.steady_rate(times, 16) == pytest.approx(16 / 4)
    assert bench.steady_rate(times, 32) is None
    assert [bench.skip_batches(k) for k in (3, 4, 8, 9, 40)] == [1, 2, 2, 3, 10]
    small, big = {"rc": 0, "items": 100, "wall_s": 20.0}, {"rc": 0, "items": 500, "wall_s": 40.0}
    assert bench.marginal_rate(small, big) == pytest.approx(20.0)
    assert bench.marginal_rate({**small, "rc": "timeout"}, big) is None
    samples = [(float(t), 50.0 + 10 * (t % 2), 1000.0 + t) for t in range(10)]
    busy = bench.busy_in_window(samples, 2, 5)
    assert busy["samples"] == 4 and busy["busy_fraction"] == pytest.approx(0.55) and busy["max_memory_mib"] == 1005
    assert bench.busy_in_window(samples, None, 5) is None


def test_the_batch_a_job_ran_at():
    assert bench.job_batch({"model": {"batch_size": 368}}, "", "auto") == 368
    log = "sdedit: ...\nresources.batch_size: auto -> 1024 (measured on cuda)\n"
    assert bench.job_batch({"model": {}}, log, "auto") == 1024
    assert bench.job_batch({}, "", 16) == 16
    assert bench.job_batch({}, "", "auto") is None


def test_settings_from_the_command_line():
    cfgs = bench.configs(tiny=False)
    for text in ("church.batch=256", "bundled.items=20000", "church.options.compile=off",
                 "bundled.options.channels_last=true"):
        bench.override(cfgs, text)
    assert cfgs["church"].batch == 256 and cfgs["bundled"].items == 20000
    assert "compile" not in cfgs["church"].options and cfgs["bundled"].options["channels_last"] is True
    for bad in ("church.nope=1", "other.batch=8", "church.batch"):
        with pytest.raises(SystemExit):
            bench.override(cfgs, bad)


def test_sampler_without_a_gpu_records_nothing():
    sampler = bench.GpuSampler()
    sampler.samples.append((1.0, 80.0, 10.0))
    assert sampler.window(0.0, 2.0)["busy_fraction"] == pytest.approx(0.8)
    assert bench.GpuSampler().window(0.0, 1.0) is None


def test_report_of_a_full_gpu_result():
    run = {"rc": 0, "items": 2048, "batch": 1024, "actors": 1, "wall_s": 20.0, "e2e_items_per_s": 102.4,
           "steady_items_per_s": 4000.0, "window": [5.0, 10.0], "start": 0.0, "phases_s": {"execute": 15.0},
           "gpu": {"busy_fraction": 0.93, "samples": 50, "max_memory_mib": 9000.0}}
    result = {"tiny": False, "ray": {"num_cpus": 16, "num_gpus": 1, "version": "2.60.0"}, "sections": {
        "bundled": {"batch": 1024, "items": 2048, "skip": 1, "marginal_items_per_s": 3800.0,
                    "small": {**run, "items": 1024, "wall_s": 18.0},
                    "pipeline": run, "share": {**run, "actors": 2, "steady_items_per_s": 4400.0},
                    "bare": {"items": 2048, "batch": 1024, "wall_s": 0.6, "e2e_items_per_s": 3400.0,
                             "steady_items_per_s": 4100.0, "first_batch_s": 0.3, "gpu": {"busy_fraction": 0.97},
                             "official": {"images_per_h": 9000.0, "calls": 500, "batch": 8}},
                    "host": {"decode_ms": 0.1, "encode_ms": 0.2}},
        "church": {"batch": 368, "items": 2208, "skip": 2, "pipeline": {**run, "gpu": {
            "busy_fraction": 0.85, "samples": 200, "max_memory_mib": 1e5}},
            "bare": {"items": 2208, "batch": 368, "wall_s": 50.0, "e2e_items_per_s": 44.0,
                     "steady_items_per_s": 4100.0, "first_batch_s": 20.0}}}}
    rows = {r[0].split(" (")[0]: r for r in bench.summarize(result)}
    assert rows["bundled: headline through the whole job"][1:] == ("41.0x", ">= 1,000x", "no")
    assert rows["bundled: pipeline / bare, steady state"][1] == "0.976"
    assert rows["bundled: pipeline / bare, marginal rate between 1024 and 2048 items"][3] == "no"
    assert rows["bundled: two actors sharing the device / one actor, steady state"][1] == "1.100"
    assert rows["church: GPU busy in steady state, pipeline"][1:] == ("85%", ">= 90 %", "no")
    text = bench.render(result)
    assert "| bundled-bare | 2048 | 1024 x 1 |" in text and "41.0x" in text


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    """``--tiny``: both model settings, the two-actor variant, the bare loop, the official loop, result files."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_pipeline.py"), "--tiny", "--out", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_pipeline.json").read_text())
    assert not result.get("errors") and not result.get("skipped"), result
    bundled, church = result["sections"]["bundled"], result["sections"]["church"]
    for sec in (bundled, church):
        assert sec["pipeline"]["rc"] == 0 and sec["pipeline"]["outputs"] == sec["items"]
        assert sec["bare"]["steady_items_per_s"] > 0 and sec["items"] % sec["batch"] == 0
    assert bundled["small"]["rc"] == 0
    assert bundled["share"]["rc"] == 0 and bundled["share"]["actors"] == 2
    assert bundled["share"]["outputs"] == bundled["share"]["items"]
    assert bundled["bare"]["official"]["images_per_h"] > 0
    assert church["config"]["model_uri"] != "fashion-mnist-ddpm"  # the UNet built on the spot
    text = (out / "gpu_pipeline.md").read_text()
    assert "headline through the whole job" in text and "church-1actor" in text and "bundled-2actors" in text
