"""Peak memory of the driver and of each worker for a 1,000- and a 50,000-item manifest: flat, or not.

Usage: python benchmarks/memory.py [--sizes 1000 50000] [--batch-size 64] [--write-docs]

Each size runs as a fresh process (so each peak is its own): a local Ray instance, the bundled
model and a one-step sampler (the model work is not what is measured here; the items still go
through manifest, decode, actor, PNG write and index). Memory is read from /proc every 0.2 s:
the driver, and every Ray worker process grouped by role (the model actor, the decode / write task
workers, Ray's own raylet and GCS). For each role: peak RSS (the kernel's high-water mark, VmHWM)
and peak private memory (RssAnon: the process's own heap, without the shared object store pages
and mapped files that RSS also counts). Streaming means the larger manifest's peaks stay within 10 %
of the smaller one's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, describe, machine, write_block  # noqa: E402

PAGE = ROOT / "docs" / "performance.md"


def _status(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _family(root: int) -> list[int]:
    """``root`` and all its descendants (Ray's raylet and GCS are the driver's children, workers theirs)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _role(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "raylet" in cmd.split(" ")[0]:
        return "raylet"
    if "gcs_server" in cmd:
        return "gcs_server"
    if not cmd.startswith("ray::"):
        return None
    if "ModelActor" in cmd or "SDEditor" in cmd:  # pipeline.pool's actor (Ray Data's MapWorker before)
        return "model actor (SDEditor)"
    if "JobBook" in cmd or "CrashLedger" in cmd:
        return "crash ledger actor"
    return "task workers (read, decode, write, index)" if cmd.startswith("ray::") else None


class Sampler(threading.Thread):
    """Polls /proc; keeps, per role, the largest peak RSS and private memory of any of its processes."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop_flag = interval, threading.Event()
        self.peaks: dict[str, dict[str, int]] = {}

    def sample(self) -> None:
        me = os.getpid()
        for pid in _family(me):  # this driver and its Ray processes: never another Ray on the machine
            role = "driver" if pid == me else _role(pid)
            if role is None:
                continue
            try:
                st = _status(pid)
            except OSError:
                continue
            peak = self.peaks.setdefault(role, {"rss_peak": 0, "private_peak": 0, "processes": 0})
            peak["rss_peak"] = max(peak["rss_peak"], st.get("VmHWM", 0))
            peak["private_peak"] = max(peak["private_peak"], st.get("RssAnon", 0))

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.sample()
            time.sleep(self.interval)


def one(items: int, batch: int) -> dict[str, Any]:
    import ray

    from pipeline.jobfile import build_spec
    from pipeline.run import run_job

    samples = ROOT / "pipeline" / "assets" / "samples"
    guides = sorted(p.name for p in samples.glob("*.png") if "mask" not in p.name)
    tmp = Path(tempfile.mkdtemp(prefix="sdedit-mem-"))
    with open(tmp / "m.csv", "w") as f:
        f.write("id,guide\n")
        for i in range(items):
            f.write(f"item-{i:07d},{samples / guides[i % len(guides)]}\n")
    spec = build_spec({"input": {"manifest": str(tmp / "m.csv")},
                       "output": {"uri": str(tmp / "out"), "sheet_items": 0},
                       "model": {"uri": "fashion-mnist-ddpm"},
                       "sampling": {"t0": 0.1, "sampler": "ddim", "steps": 1},
                       "resources": {"batch_size": batch}})
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    summary = run_job(spec, sheet=False)
    wall = time.perf_counter() - start
    sampler.sample()
    sampler.stop_flag.set()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    assert summary.outputs_ok == items, summary
    return {"items": items, "wall_s": wall, "peaks": sampler.peaks}


def write_docs(result: dict[str, Any]) -> None:
    small, large = result["runs"]
    roles = sorted(set(small["peaks"]) & set(large["peaks"]))
    mib = 1024 * 1024
    lines = [
        f"Measured with `python benchmarks/memory.py --sizes {small['items']} {large['items']} --batch-size "
        f"{result['batch']}` on {describe(result['machine'])}. One-step sampler (the model work is not "
        f"what is measured); wall {small['wall_s']:.0f} s and {large['wall_s']:.0f} s.",
        "",
        f"| process | peak RSS, {small['items']:,} items (MiB) | peak RSS, {large['items']:,} items (MiB) | ratio | "
        f"peak private, {small['items']:,} (MiB) | peak private, {large['items']:,} (MiB) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for role in roles:
        a, b = small["peaks"][role], large["peaks"][role]
        lines.append(f"| {role} | {a['rss_peak'] / mib:.0f} | {b['rss_peak'] / mib:.0f} | "
                     f"{b['rss_peak'] / max(a['rss_peak'], 1):.2f} | {a['private_peak'] / mib:.0f} | "
                     f"{b['private_peak'] / mib:.0f} | {b['private_peak'] / max(a['private_peak'], 1):.2f} |")
    write_block(PAGE, "memory", "\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 50000])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.batch_size)), flush=True)
        return {}
    runs = []
    for items in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(items), "--batch-size", str(args.batch_size)],
                              capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"run with {items} items failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(lines[-1][len("RESULT "):]))
        print(f"{items:7d} items: {runs[-1]['wall_s']:.0f} s", flush=True)
        for role, peak in sorted(runs[-1]["peaks"].items()):
            print(f"    {role:45s} peak RSS {peak['rss_peak'] / 2**20:7.0f} MiB   "
                  f"private {peak['private_peak'] / 2**20:7.0f} MiB")
    result = {"machine": machine(), "batch": args.batch_size, "runs": runs}
    if args.write_docs and len(runs) == 2:
        write_docs(result)
    return result


if __name__ == "__main__":
    main()
