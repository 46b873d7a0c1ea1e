"""The whole job on a GPU: ``sdedit run`` against the bare kernel loop, at the same batch and options.

Usage: python benchmarks/gpu_pipeline.py [--out DIR] [--budget-s 520] [--sections bundled,church,...] [--set ...]
       python benchmarks/gpu_pipeline.py --tiny --out DIR      # CPU, tiny sizes: a dry run of every code path

Sections, in the order they run (each skipped when what is left of --budget-s cannot hold it):
- ``bundled``: the bundled model through ``python -m pipeline run`` (= ``sdedit run``) at ``batch_size: auto`` +
  bf16 on 40,000 items (rounded up to whole batches) and on 2 batches (the marginal rate between the two), the
  bare kernel loop at the batch the job chose, and the official algorithm (ancestral, 500 calls, fp32, batch 8)
  on the same card: pipeline / bare and the headline through the whole job.
- ``church``: a UNet2DModel with google/ddpm-church-256's architecture (random weights) on 256x256 RGB PNG
  guides, at least 2,000 items, batch auto + bf16 + compile: pipeline / bare, the GPU's busy fraction, decode/encode.
- ``bundled-share``, ``church-share``: the same job with two actors sharing the GPU (``num_gpus: 0.5``; on the
  CPU, two actors): does one actor's host work overlap the other's GPU work?

How it measures. One local Ray instance is started here and every job connects to it (``--address``), as
jobs on a long-lived cluster do. ``batch_size: auto`` is first resolved by a small job (which also warms
the machine's file cache and Ray), and the item count is rounded up to a multiple of that batch (and to
at least ``min_batches`` batches), so every batch has one shape (a compiled network recompiles for a new
one). The bare loop is a subprocess of this script: decoded guides -> ``sdedit`` -> uint8 on the host, per
batch, as the model actor does; it records each batch's end. Each job output's completion time is its
image file's mtime. Steady state, both sides alike: the items after the first quarter of each actor's
batches (at least two: the first holds the actor's start, compilation and cuDNN warm-up, the second the
write workers' cold start), over the time from the end of those to the last output. Where the job has no
compilation (the bundled model) a second, smaller job also gives the marginal rate between the two sizes,
as benchmarks/pipeline_vs_bare.py measures it. The GPU's busy fraction is NVML's utilisation sampled every
0.1 s (pynvml, else nvidia-smi) over the same window. Results: OUT/gpu_pipeline.json and
OUT/gpu_pipeline.md, rewritten after every step, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, describe, machine  # noqa: E402

SAMPLER = "dpmpp_2m_sde"  # the job's default sampler, named in the job files so that both sides use it
T0 = 0.5
BUNDLED = "fashion-mnist-ddpm"
INDUCTOR_CACHE = "/tmp/sdedit-inductor-cache"  # kept between runs on one warm machine (item 3 of issue 16)


@dataclass
class Config:
    """One model setting, measured through the job and through the bare loop."""

    name: str
    items: int  # at least this many; rounded up to a multiple of the batch
    batch: int | str  # "auto" or a number
    options: dict[str, Any]  # model.* fields of the job file = ExecutionOptions of the bare loop
    steps: int | None = None
    guides: int = 0  # 0: the bundled sample guides; n: n random RGB PNGs at the model's size
    official_images: int = 0  # > 0: also time the official algorithm on this model
    official_steps: int | None = None  # None: the official t0 x 1000
    share_batch: str = "same"  # two sharing actors get the same batch, or half of it (memory-bound models)
    min_batches: int = 4  # at least this many batches per run: a steady state after the skipped ones
    two_sizes: bool = False  # also a smaller job: the marginal rate between the two sizes
    model_uri: str = BUNDLED  # "": a church-256-sized UNet with random weights, built on the spot
    size: int = 28


def configs(tiny: bool) -> dict[str, Config]:
    if tiny:
        return {"bundled": Config("bundled", 24, 4, {"autocast": "bfloat16"}, steps=2, official_images=8,
                                  official_steps=3, two_sizes=True),
                "church": Config("church", 16, 4, {"autocast": "bfloat16"}, steps=2, guides=4, share_batch="half",
                                 model_uri="", size=32)}
    return {"bundled": Config("bundled", 40_000, "auto", {"autocast": "bfloat16"}, official_images=40,
                              min_batches=8, two_sizes=True),
            "church": Config("church", 2_000, "auto", {"autocast": "bfloat16", "compile": "default"}, guides=64,
                             share_batch="half", model_uri="", size=256)}


# Seconds a step may take on the H200 before it is not started (compile included); the budget check uses them.
ESTIMATE_S = {"probe": 45, "build": 25, "small:bundled": 40, "pipeline:bundled": 60, "bare:bundled": 60,
              "pipeline:church": 170, "bare:church": 110, "share:bundled": 50, "share:church": 150}


# ---------------------------------------------------------------------------------------------- measurements

def steady_rate(times: list[float], first_wave: int) -> float | None:
    """Items per second after the first ``first_wave`` completions: (N - n1) / (t[N] - t[n1]).

    ``times`` are completion times in order (one per item; a batch's items share its end time)."""
    n = len(times)
    if n <= first_wave or first_wave < 1:
        return None
    span = times[-1] - times[first_wave - 1]
    return (n - first_wave) / span if span > 0 else None


def skip_batches(batches: int) -> int:
    """Batches per actor left out of the steady state: the first quarter, at least two where four or more run
    (the first holds the actor's start and compilation; the writes' cold start can delay a few more)."""
    return 1 if batches < 4 else max(2, math.ceil(batches / 4))


def marginal_rate(small: dict[str, Any], big: dict[str, Any]) -> float | None:
    """(N - n) / (wall_N - wall_n): the per-item rate of a job once its fixed cost is paid."""
    if small.get("rc") != 0 or big.get("rc") != 0 or big["wall_s"] <= small["wall_s"]:
        return None
    return (big["items"] - small["items"]) / (big["wall_s"] - small["wall_s"])


def staircase(batch_ends: list[float], batch_sizes: list[int]) -> list[float]:
    """Per-item completion times from per-batch end times."""
    return [t for t, n in zip(batch_ends, batch_sizes) for _ in range(n)]


class GpuSampler:
    """NVML's GPU utilisation (percent of time a kernel ran) and memory, sampled in a thread."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s, self.samples, self.source = period_s, [], None  # samples: (time, util %, MiB used)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> GpuSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)

            def read() -> tuple[float, float]:
                return (float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                        pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)

            read()
            self.source, target = "pynvml", self._poll
            self._read = read
        except Exception:  # noqa: BLE001 - no NVML binding: nvidia-smi, else nothing
            if shutil.which("nvidia-smi") is None:
                return self
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={int(self.period_s * 1000)}"], stdout=subprocess.PIPE, text=True)
            self.source, target = "nvidia-smi", self._follow
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                util, mem = self._read()
                self.samples.append((time.time(), util, mem))
            except Exception:  # noqa: BLE001 - a failed read is a missing sample
                pass

    def _follow(self) -> None:
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(","))
                self.samples.append((time.time(), util, mem))
            except ValueError:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()

    def window(self, t0: float | None, t1: float | None) -> dict[str, Any] | None:
        return busy_in_window(self.samples, t0, t1)


def busy_in_window(samples: list[tuple[float, float, float]], t0: float | None,
                   t1: float | None) -> dict[str, Any] | None:
    if t0 is None or t1 is None:
        return None
    inside = [(u, m) for t, u, m in samples if t0 <= t <= t1]
    if not inside:
        return None
    return {"busy_fraction": sum(u for u, _ in inside) / len(inside) / 100, "samples": len(inside),
            "max_memory_mib": max(m for _, m in inside)}


# ---------------------------------------------------------------------------------------------- inputs

def make_guides(cfg: Config, folder: Path) -> list[str]:
    from PIL import Image

    if not cfg.guides:
        samples = ROOT / "pipeline" / "assets" / "samples"
        lines = (samples / "manifest.csv").read_text().splitlines()[1:]
        # unmasked rows only: a masked row is a kernel call of its own, another batch shape
        return [str(samples / line.split(",")[1]) for line in lines if line.split(",")[2] == ""]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(cfg.guides):  # smooth colour fields with a few hard strokes: a painting-like PNG
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((cfg.size, cfg.size), Image.BICUBIC)).copy()
        for _ in range(3):
            y, x = rng.integers(0, cfg.size - cfg.size // 8, 2)
            img[y : y + cfg.size // 8, x : x + cfg.size // 3] = rng.integers(0, 256, 3)
        paths.append(str(folder / f"g{i:03d}.png"))
        Image.fromarray(img).save(paths[-1])
    return paths


def build_unet(folder: Path, size: int) -> str:
    """google/ddpm-church-256's architecture with random weights (a tiny one below 256 px), DDPM schedule."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    if size >= 256:
        net = UNet2DModel(
            sample_size=size, in_channels=3, out_channels=3, layers_per_block=2,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                              "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))
    else:
        net = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                          block_out_channels=(16, 32), norm_num_groups=8,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    net.save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(clip_sample=False).save_config(folder)
    return str(folder)


def write_manifest(path: Path, guides: list[str], n: int, prefix: str) -> None:
    path.write_text("id,guide\n" + "".join(f"{prefix}{i:06d},{guides[i % len(guides)]}\n" for i in range(n)))


# ---------------------------------------------------------------------------------------------- the job

@dataclass
class Bench:
    out: Path
    work: Path
    address: str
    device: str
    deadline: float
    sampler: GpuSampler
    result: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_pipeline.json").write_text(json.dumps(self.result, indent=1, default=str))
        (self.out / "gpu_pipeline.md").write_text(render(self.result))

    def fits(self, step: str) -> bool:
        need = ESTIMATE_S.get(step, 30) if self.device == "cuda" else 0
        if self.left() < need:
            self.result.setdefault("skipped", []).append(f"{step}: {self.left():.0f} s left, needs about {need} s")
            print(f"skipped (time budget): {step}", flush=True)
            self.save()
            return False
        return True

    def job(self, name: str, cfg: Config, manifest: Path, n: int, batch: int | str, actors: int = 1,
            options: dict[str, Any] | None = None, skip: int = 1) -> dict[str, Any]:
        """``python -m pipeline run`` on the shared Ray instance; its timings from the outside and from job.json."""
        out = self.work / name
        gpus = (1.0 / actors) if self.device == "cuda" else 0.0
        spec = {"input": {"manifest": str(manifest)},
                "output": {"uri": str(out), "sheet_items": 0, "if_exists": "overwrite"},
                "model": {"uri": cfg.model_uri, "device": "auto", **(cfg.options if options is None else options)},
                "sampling": {"t0": T0, "sampler": SAMPLER, "steps": cfg.steps, "samples_per_item": 1, "seed": 0},
                "resources": {"actors": actors, "batch_size": batch, "num_gpus": gpus,
                              "num_cpus": 1.0 if actors == 1 or self.device == "cuda" else 0.5}}
        job_file = self.work / f"{name}.yaml"
        import yaml

        job_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        log = self.work / f"{name}.log"
        start = time.time()
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job_file), "--address",
                                     self.address, "--no-sheet"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=max(10.0, self.left()))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
        end = time.time()
        row: dict[str, Any] = {"name": name, "items": n, "actors": actors, "batch_asked": batch, "rc": rc,
                               "wall_s": end - start, "start": start, "end": end, "spec": spec}
        if rc != 0:
            row["log_tail"] = log.read_text()[-3000:]
            print(f"{name}: FAILED (rc {rc}); log {log}:\n{row['log_tail'][-1500:]}", flush=True)
            return row
        record = json.loads((out / "job.json").read_text())
        row["batch"] = job_batch(record, log.read_text(), batch)
        if row["batch"] is None:
            row["rc"] = "unknown batch size"
            return row
        row["phases_s"] = record.get("phases_s")
        times = sorted(p.stat().st_mtime_ns / 1e9 for p in (out / "images").rglob("*.png")
                       if not p.name.startswith("."))
        row["outputs"] = len(times)
        row["e2e_items_per_s"] = n / row["wall_s"]
        first_wave = skip * row["batch"] * actors
        row["skipped_batches_per_actor"] = skip
        row["steady_items_per_s"] = steady_rate(times, first_wave)
        if times:
            row["first_output_s"], row["last_output_s"] = times[0] - start, times[-1] - start
            row["window"] = [times[min(first_wave, len(times)) - 1], times[-1]]
            row["gpu"] = self.sampler.window(*row["window"])
        row["example_output"] = next((str(p) for p in (out / "images").rglob("*.png")), None)
        print(f"{name:22s} {n:6d} items  batch {row['batch']:5d} x {actors} actor(s)  wall {row['wall_s']:7.1f} s  "
              f"e2e {row['e2e_items_per_s']:9.1f}/s  steady {_fmt(row['steady_items_per_s'], '9.1f')}/s  "
              f"busy {_fmt((row.get('gpu') or {}).get('busy_fraction'), '.0%')}", flush=True)
        return row

    def bare(self, name: str, cfg: Config, guides: list[str], n: int, batch: int, official: bool,
             skip: int) -> dict[str, Any]:
        """The bare loop (and the official algorithm) in a subprocess of this script: its GPU memory goes with it."""
        spec = {"model_uri": _model_path(cfg.model_uri), "device": self.device, "guides": guides, "items": n,
                "batch": batch, "options": cfg.options, "steps": cfg.steps, "size": cfg.size, "skip": skip,
                "official": {"images": cfg.official_images, "steps": cfg.official_steps} if official else None}
        spec_file, result_file = self.work / f"{name}.json", self.work / f"{name}.result.json"
        spec_file.write_text(json.dumps(spec))
        log = self.work / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, __file__, "--bare", str(spec_file), str(result_file)], cwd=ROOT,
                                    stdout=f, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=max(10.0, self.left()))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
        if rc != 0 or not result_file.exists():
            tail = log.read_text()[-3000:]
            print(f"{name}: FAILED (rc {rc}):\n{tail[-1500:]}", flush=True)
            return {"name": name, "rc": rc, "log_tail": tail}
        row = json.loads(result_file.read_text())
        row["gpu"] = self.sampler.window(*row["window"]) if row.get("window") else None
        print(f"{name:22s} {n:6d} items  batch {batch:5d}  bare loop  wall {row['wall_s']:7.1f} s  "
              f"steady {_fmt(row['steady_items_per_s'], '9.1f')}/s  busy "
              f"{_fmt((row.get('gpu') or {}).get('busy_fraction'), '.0%')}"
              + (f"; official {row['official']['images_per_h']:,.0f} images/h" if row.get("official") else ""),
              flush=True)
        return row


def override(cfgs: dict[str, Config], text: str) -> None:
    """``section.field=value`` or ``section.options.name=value`` (value as YAML; ``off`` removes an option)."""
    import yaml

    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not raw or parts[0] not in cfgs or len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "options"):
        raise SystemExit(f"--set {text!r}: expected SECTION.FIELD=VALUE or SECTION.options.NAME=VALUE, "
                         f"SECTION one of {sorted(cfgs)}")
    cfg, value = cfgs[parts[0]], yaml.safe_load(raw)
    if len(parts) == 3:
        if value in ("off", "none", None, False):
            cfg.options.pop(parts[2], None)
        else:
            cfg.options[parts[2]] = value
    elif parts[1] in Config.__dataclass_fields__ and parts[1] != "name":
        setattr(cfg, parts[1], value)
    else:
        raise SystemExit(f"--set {text!r}: no field {parts[1]!r}; fields: {sorted(Config.__dataclass_fields__)}")


def machine_info(device: str) -> dict[str, Any]:
    """common.machine(), from a subprocess on CUDA: naming the GPU through torch would give this process a CUDA
    context, and its memory would be missing from what the jobs' ``batch_size: auto`` measures as free."""
    if device != "cuda":
        return machine()
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "from common import machine; print(json.dumps(machine()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def job_batch(record: dict[str, Any], log_text: str, asked: int | str) -> int | None:
    """The batch a job ran at: job.json's model.batch_size, else the log line of ``batch_size: auto``."""
    value = (record.get("model") or {}).get("batch_size")
    if isinstance(value, int) and value > 0:
        return value
    found = re.findall(r"batch_size: auto -> (\d+)", log_text)
    if found:
        return int(found[-1])
    return asked if isinstance(asked, int) else None


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _model_path(uri: str) -> str:
    bundled = ROOT / "pipeline" / "assets" / "models" / uri  # where the bundled models live (docs/pipeline.md)
    return str(bundled) if bundled.is_dir() else uri


def host_costs(guide: str, output: str | None, reps: int = 20) -> dict[str, float]:
    """One core's decode (PNG -> array) and encode (array -> PNG) milliseconds per item, with PIL."""
    from PIL import Image

    def decode(path: str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert(im.mode))

    costs = {}
    for key, path in (("decode_ms", guide), ("encode_ms", output or guide)):
        arr = decode(path)
        start = time.perf_counter()
        for _ in range(reps):
            if key == "decode_ms":
                decode(path)
            else:
                Image.fromarray(arr).save(io.BytesIO(), format="PNG")
        costs[key] = (time.perf_counter() - start) * 1000 / reps
    return costs


def run_section(b: Bench, cfg: Config, share: bool, main_run: bool) -> None:
    """One model: (probe), the job with one actor (and a smaller one), the bare loop (+ official); or the
    sharing variant."""
    sec = b.result["sections"].setdefault(cfg.name, {"config": asdict(cfg)})
    if "guides" not in sec:
        if not cfg.model_uri:
            if not b.fits("build"):
                return
            start = time.time()
            cfg.model_uri = build_unet(b.work / f"{cfg.name}-model", cfg.size)
            sec["config"] = asdict(cfg)
            sec["build_s"] = time.time() - start
        sec["guides"] = make_guides(cfg, b.work / f"{cfg.name}-guides")
    guides = sec["guides"]
    if "batch" not in sec:
        if cfg.batch == "auto":  # a small job resolves it (and warms Ray's workers); compile is not needed for that
            if not b.fits("probe"):
                return
            probe_manifest = b.work / f"{cfg.name}-probe.csv"
            write_manifest(probe_manifest, guides, 8, "p-")
            opts = {k: v for k, v in cfg.options.items() if k != "compile"}
            sec["probe"] = b.job(f"{cfg.name}-probe", cfg, probe_manifest, 8, "auto", options=opts)
            b.save()
            if sec["probe"]["rc"] != 0:
                return
            sec["batch"] = sec["probe"]["batch"]
        else:
            sec["batch"] = int(cfg.batch)
        batches = max(math.ceil(cfg.items / sec["batch"]), cfg.min_batches)
        sec["items"], sec["skip"] = batches * sec["batch"], skip_batches(batches)
        write_manifest(b.work / f"{cfg.name}.csv", guides, sec["items"], "i-")
    batch, n, skip, manifest = sec["batch"], sec["items"], sec["skip"], b.work / f"{cfg.name}.csv"
    if main_run:
        if cfg.two_sizes and b.fits(f"small:{cfg.name}"):
            n_small = min(2 * batch, n // 2 // batch * batch)  # fixed costs alike; the larger difference, the better
            small_manifest = b.work / f"{cfg.name}-small.csv"
            write_manifest(small_manifest, guides, n_small, "s-")
            sec["small"] = b.job(f"{cfg.name}-small", cfg, small_manifest, n_small, cfg.batch, skip=skip)
            b.save()
        if not b.fits(f"pipeline:{cfg.name}"):
            return
        sec["pipeline"] = b.job(f"{cfg.name}-1actor", cfg, manifest, n, cfg.batch, skip=skip)
        if sec.get("small"):
            sec["marginal_items_per_s"] = marginal_rate(sec["small"], sec["pipeline"])
        b.save()
        if sec["pipeline"].get("batch", batch) != batch:
            sec["warning"] = (f"the job chose batch {sec['pipeline']['batch']}, the probe {batch}: the last batch "
                              "differs in shape")
        if not b.fits(f"bare:{cfg.name}"):
            return
        sec["bare"] = b.bare(f"{cfg.name}-bare", cfg, guides, n, batch, official=cfg.official_images > 0, skip=skip)
        if sec["pipeline"].get("example_output"):
            sec["host"] = host_costs(guides[0], sec["pipeline"]["example_output"])
        b.save()
    if share:
        if not b.fits(f"share:{cfg.name}"):
            return
        if cfg.share_batch == "same" or batch < 2:
            share_batch = batch
        else:
            share_batch = batch // 2 // 8 * 8 if batch >= 16 else batch // 2
        n_share = math.ceil(n / (2 * share_batch)) * 2 * share_batch
        share_manifest = manifest
        if n_share != n:
            share_manifest = b.work / f"{cfg.name}-share.csv"
            write_manifest(share_manifest, guides, n_share, "i-")
        sec["share"] = b.job(f"{cfg.name}-2actors", cfg, share_manifest, n_share, share_batch, actors=2,
                             skip=skip_batches(n_share // share_batch // 2))
        b.save()


# ---------------------------------------------------------------------------------------------- the bare loop

def bare_main(spec_file: str, result_file: str) -> None:
    import torch
    from PIL import Image

    import sdedit_kernel as sk

    spec = json.loads(Path(spec_file).read_text())
    device = spec["device"]
    cuda = device.startswith("cuda")
    torch.set_num_threads(1)
    model = sk.load_score_model(spec["model_uri"], device=device)
    opts = dict(spec["options"])
    sk.accelerate(model, sk.ExecutionOptions(autocast=opts.get("autocast"), channels_last=opts.get("channels_last",
                                                                                                  False),
                                             compile=opts.get("compile"),
                                             cudnn_benchmark=opts.get("cudnn_benchmark", False)))
    mode = "L" if model.channels == 1 else "RGB"
    unique = np.stack([np.asarray(Image.open(p).convert(mode).resize((spec["size"], spec["size"])))
                       .reshape(spec["size"], spec["size"], model.channels) for p in spec["guides"]])
    n, batch = spec["items"], spec["batch"]
    pixels = unique[np.arange(n) % len(unique)]  # decoded before the clock starts: the loop is the kernel alone
    ids = [f"i-{i:06d}" for i in range(n)]
    dev = model.device
    rng_device = dev if cuda else torch.device("cpu")  # as the model actor draws its noise

    def to_device(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(dev, non_blocking=True) if cuda else t

    ends, sizes = [], []
    start = time.time()
    with torch.inference_mode():
        for lo in range(0, n, batch):
            chunk = torch.from_numpy(pixels[lo : lo + batch]).permute(0, 3, 1, 2).float().div(255.0)
            gens = [sk.generator_for(0, ids[i], 0, device=rng_device) for i in range(lo, min(lo + batch, n))]
            edited = sk.sdedit(model, to_device(chunk), t0=T0, steps=spec["steps"], sampler=SAMPLER, generator=gens)
            edited.float().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            ends.append(time.time())
            sizes.append(len(gens))
    times = staircase(ends, sizes)
    skip = min(spec["skip"], len(ends))
    result: dict[str, Any] = {"items": n, "batch": batch, "wall_s": ends[-1] - start, "first_batch_s": ends[0] - start,
                              "skipped_batches_per_actor": skip, "steady_items_per_s": steady_rate(times, skip * batch),
                              "window": [ends[skip - 1], ends[-1]], "e2e_items_per_s": n / (ends[-1] - start)}
    del model
    if cuda:
        torch.cuda.empty_cache()
    if spec.get("official"):
        result["official"] = official_rate(spec, unique, device)
    Path(result_file).write_text(json.dumps(result))


def official_rate(spec: dict[str, Any], unique: np.ndarray, device: str) -> dict[str, Any]:
    """The official SDEdit algorithm: ancestral at t0 x 1000 calls (or ``steps``), fp32 eager, batch 8."""
    import torch

    import sdedit_kernel as sk

    model = sk.load_score_model(spec["model_uri"], device=device)
    cuda = device.startswith("cuda")
    rng_device = model.device if cuda else torch.device("cpu")
    images, steps = spec["official"]["images"], spec["official"]["steps"]
    pool = torch.from_numpy(unique[np.arange(images) % len(unique)]).permute(0, 3, 1, 2).float().div(255.0)
    with torch.inference_mode():
        sk.sdedit(model, pool[:8].to(model.device), t0=T0, steps=1, sampler="ancestral")  # allocations, kernels
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for lo in range(0, images, 8):
            chunk = pool[lo : lo + 8].to(model.device)
            gens = [sk.generator_for(0, f"o{lo + k}", 0, device=rng_device) for k in range(len(chunk))]
            sk.sdedit(model, chunk, t0=T0, steps=steps, sampler="ancestral", generator=gens)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    calls = sk.resolve_steps(model, T0, steps, "ancestral")
    return {"images": images, "calls": calls, "batch": 8, "wall_s": wall, "images_per_h": 3600 * images / wall}


# ---------------------------------------------------------------------------------------------- report

def summarize(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, value, target, met) rows."""
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, value: str, target: str = "", met: bool | None = None) -> None:
        rows.append((what, value, target, "" if met is None else "yes" if met else "no"))

    for name, sec in result.get("sections", {}).items():
        pipe, bare = sec.get("pipeline") or {}, sec.get("bare") or {}
        ps, bs = pipe.get("steady_items_per_s"), bare.get("steady_items_per_s")
        church = name == "church"
        if ps and bs:
            add(f"{name}: pipeline / bare, steady state (batch {sec['batch']}, {sec['items']} items, first "
                f"{sec['skip']} batch(es) left out)", f"{ps / bs:.3f}", ">= 0.95", ps / bs >= 0.95)
        if sec.get("marginal_items_per_s") and bs:
            m = sec["marginal_items_per_s"]
            add(f"{name}: pipeline / bare, marginal rate between {sec['small']['items']} and {sec['items']} items",
                f"{m / bs:.3f}", ">= 0.95", m / bs >= 0.95)
        if pipe.get("e2e_items_per_s") and bare.get("e2e_items_per_s"):
            add(f"{name}: pipeline / bare, end to end (job wall, start included, vs whole loop)",
                f"{pipe['e2e_items_per_s'] / bare['e2e_items_per_s']:.3f}")
        official = bare.get("official")
        if official and pipe.get("e2e_items_per_s"):
            e2e = 3600 * pipe["e2e_items_per_s"]
            ratio = e2e / official["images_per_h"]
            add(f"{name}: official algorithm (ancestral, {official['calls']} calls, fp32, batch 8), bare loop",
                f"{official['images_per_h']:,.0f} images/h")
            add(f"{name}: `sdedit run` end to end, {sec['items']} items", f"{e2e:,.0f} images/h")
            add(f"{name}: headline through the whole job (end to end / official)", f"{ratio:,.1f}x", ">= 1,000x",
                ratio >= 1000)
            for label, rate in (("steady state", ps), ("marginal rate", sec.get("marginal_items_per_s"))):
                if rate:
                    add(f"{name}: headline through the job, {label}", f"{3600 * rate / official['images_per_h']:,.1f}x")
        gpu = pipe.get("gpu")
        if gpu:
            add(f"{name}: GPU busy in steady state, pipeline ({gpu['samples']} samples)",
                f"{gpu['busy_fraction']:.0%}", ">= 90 %" if church else "", gpu["busy_fraction"] >= 0.9 if church
                else None)
        if bare.get("gpu"):
            add(f"{name}: GPU busy in steady state, bare loop", f"{bare['gpu']['busy_fraction']:.0%}")
        host = sec.get("host")
        if host and bs:
            cpus = result.get("ray", {}).get("num_cpus", 2) - 1
            capacity = 1000 * cpus / (host["decode_ms"] + host["encode_ms"])
            add(f"{name}: decode + encode of one item on one core (PIL), ms",
                f"{host['decode_ms']:.2f} + {host['encode_ms']:.2f}")
            add(f"{name}: decode/encode capacity on {cpus} CPUs vs the bare loop's steady rate",
                f"{capacity:,.0f} vs {bs:,.0f} items/s", "capacity > rate", capacity > bs)
        share = sec.get("share") or {}
        if share.get("steady_items_per_s") and ps:
            add(f"{name}: two actors sharing the device / one actor, steady state (batch {share.get('batch')} "
                "each)", f"{share['steady_items_per_s'] / ps:.3f}")
        if share.get("e2e_items_per_s") and pipe.get("e2e_items_per_s"):
            add(f"{name}: two actors sharing the device / one actor, end to end",
                f"{share['e2e_items_per_s'] / pipe['e2e_items_per_s']:.3f}")
        if (share.get("gpu") or {}).get("busy_fraction") is not None:
            add(f"{name}: GPU busy in steady state, two actors sharing", f"{share['gpu']['busy_fraction']:.0%}")
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [f"# sdedit run on {'the CPU (--tiny)' if result.get('tiny') else 'a GPU'}", ""]
    if result.get("tiny"):
        lines += ["A dry run of every code path with tiny sizes: its figures measure nothing.", ""]
    if result.get("machine"):
        lines += [f"Measured with `python benchmarks/gpu_pipeline.py{' --tiny' if result.get('tiny') else ''}` on "
                  f"{describe(result['machine'])}; Ray {result.get('ray', {}).get('version')} "
                  f"({result.get('ray', {}).get('num_cpus')} CPUs, {result.get('ray', {}).get('num_gpus')} GPUs), "
                  f"sampler {SAMPLER}, t0 {T0}. GPU utilisation from {result.get('gpu_sampler') or 'nothing'}.", ""]
    lines += ["| measurement | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summarize(result)]
    lines += ["", "| run | items | batch x actors | wall (s) | end to end (items/s) | steady (items/s) | "
              "first batch done (s) | GPU busy, steady | phases (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, sec in result.get("sections", {}).items():
        for key in ("probe", "small", "pipeline", "bare", "share"):
            r = sec.get(key)
            if not r:
                continue
            if r.get("rc", 0) != 0:
                lines.append(f"| {r['name']} | | | | failed (rc {r['rc']}) | | | | |")
                continue
            first = r.get("first_batch_s") if key == "bare" else (
                r["window"][0] - r["start"] if r.get("window") else None)
            phases = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("phases_s") or {}).items())
            lines.append(f"| {r.get('name', name + '-bare')} | {r['items']} | {r['batch']} x {r.get('actors', 1)} | "
                         f"{r['wall_s']:.1f} | {r['e2e_items_per_s']:.1f} | {_fmt(r.get('steady_items_per_s'), '.1f')}"
                         f" | {_fmt(first, '.1f')} | {_fmt((r.get('gpu') or {}).get('busy_fraction'), '.0%')} | "
                         f"{phases} |")
    for key in ("skipped", "errors"):
        if result.get(key):
            lines += ["", f"{key.capitalize()}: " + "; ".join(result[key])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/gpu_pipeline"))
    p.add_argument("--workdir", type=Path, help="job outputs and logs (default: a temporary folder, removed)")
    p.add_argument("--budget-s", type=float, default=520, help="steps that would not end inside it are skipped")
    p.add_argument("--sections", help="comma-separated, in order (default: bundled,church,bundled-share,"
                   "church-share; with --tiny the last is left out)")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny models and sizes: a dry run of every code path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change a setting, e.g. church.batch=256, bundled.items=20000, church.options.compile=off "
                   "(value parsed as YAML); repeatable")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available, cpu with --tiny)")
    p.add_argument("--bare", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare:
        bare_main(*args.bare)
        return {}
    import torch

    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    # Ray's workers and the job subprocesses import the project from here, also where it is not pip-installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    cache = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", INDUCTOR_CACHE))
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sdedit-gpu-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    sampler = GpuSampler().start() if device == "cuda" else GpuSampler()
    result: dict[str, Any] = {"machine": machine_info(device), "tiny": args.tiny, "device": device,
                              "budget_s": args.budget_s,
                              "gpu_sampler": sampler.source, "sections": {},
                              "inductor_cache": {"dir": str(cache), "warm_at_start": cache.is_dir()
                                                 and any(cache.iterdir())}}
    import ray

    cpus = os.cpu_count() or 2
    num_cpus = cpus if device == "cuda" else max(4, cpus)  # on a small CPU: room for 2 actors and the I/O tasks
    ray.init(address="local", num_cpus=num_cpus, num_gpus=1 if device == "cuda" else 0, include_dashboard=False,
             logging_level="warning")
    result["ray"] = {"version": ray.__version__, "num_cpus": num_cpus, "num_gpus": 1 if device == "cuda" else 0}
    bench = Bench(args.out, work, ray.get_runtime_context().gcs_address, device, time.time() + args.budget_s,
                  sampler, result)
    cfgs = configs(args.tiny)
    for text in args.overrides:
        override(cfgs, text)
    result["configs"] = {k: asdict(v) for k, v in cfgs.items()}
    sections = args.sections or ("bundled,church,bundled-share" if args.tiny else
                                 "bundled,church,bundled-share,church-share")
    wanted = [s.strip() for s in sections.split(",") if s.strip()]
    try:
        for section in wanted:
            name, share = section.removesuffix("-share"), section.endswith("-share")
            if name not in cfgs:
                raise SystemExit(f"unknown section {section!r}")
            try:
                run_section(bench, cfgs[name], share=share, main_run=not share)
            except Exception as e:  # noqa: BLE001 - a failing section must not cost the others their device time
                result.setdefault("errors", []).append(f"{section}: {type(e).__name__}: {e}")
                print(f"{section} failed: {type(e).__name__}: {e}", flush=True)
            bench.save()
    finally:
        sampler.stop()
        ray.shutdown()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    bench.save()
    print("\n" + render(result), flush=True)
    return result


if __name__ == "__main__":
    main()
