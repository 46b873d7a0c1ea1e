"""Scale: the driver's start-up and resume costs as the manifest and the output grow (issue 17).

Usage: python benchmarks/scale.py manifest [--rows 100000 1000000 10000000] [--format parquet]
       python benchmarks/scale.py startup --code-root ROOT [--rows 100000 1000000 10000000]
       python benchmarks/scale.py resume-before --code-root ROOT [--done 20000 100000 1000000]
       python benchmarks/scale.py resume-after --code-root ROOT [--done 1000000] [--new 10000]
       python benchmarks/scale.py resume-before-run --code-root ROOT [--done 100000] [--new 1000]
       python benchmarks/scale.py table LOG.jsonl
       (each also takes [--folder /tmp/scale] [--log LOG.jsonl] [--timeout-s 1200])

The model stage is left out: what is measured is what the driver does before (or instead of) any
per-item work, by simulation. ``manifest`` writes deterministic manifests (``id`` ``item-%09d``,
``guide`` a relative path to one bundled PNG copied next to them), streamed one row group at a time,
and reuses one that already has the right row count. ``startup`` runs, for each size, a fresh
Python process with ``PYTHONPATH=ROOT`` (so the code measured is ROOT's and the driver's memory
starts clean) that starts a local Ray instance on 2 CPUs and times the manifest read with its
duplicate-id check, with the driver's peak RSS. ``resume-before`` synthesizes a finished output
folder of D done outputs in the flat layout of the code before issue 17 (``OUT/index/*.parquet`` of
1,000 rows, ``OUT/images/<stem>_s0.png`` as empty files, ``OUT/job.json``), then times that code's
``completed_outputs`` in a fresh process, with the pickled size of the done-set it returns (what the
decode stage ships to every task); the folder is deleted after. ``resume-after`` (the sharded code)
synthesizes a finished job of D outputs in shards of 10,000 (index files and records, written by
that code's own ``finish_shard``), appends N new rows to its manifest and runs the whole ``run_job``
resume, against a clean run of the N new items alone into an empty folder: the difference is what
the D done outputs cost the rerun. ``resume-before-run`` does the same whole-run comparison on the
code before issue 17 (its flat layout synthesized with image files). A run that passes ``--timeout-s``
or runs out of memory is recorded as such. Every result is printed and, with ``--log``, appended as
one JSON line, after one line describing the machine.

The code measured differs between before and after issue 17; what is shared is :func:`run_snippet`
(a Python snippet in a fresh process under a given PYTHONPATH, returning its JSON result) and the
helpers :data:`PRELUDE` gives every snippet (``ARGS``, ``rss_mib``, ``peak_mib``, ``TreePss``,
``emit``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, describe, machine  # noqa: E402

FOLDER = Path("/tmp/scale")
GUIDE = ROOT / "pipeline" / "assets" / "samples" / "tshirt.png"
ROW_GROUP = 100_000
INDEX_ROWS_PER_FILE = 1000  # output.rows_per_index_file's default before issue 17
TIMEOUT_S = 20 * 60
MARKER = "SCALE-RESULT "  # the line of a snippet's stdout that carries its result

# What every snippet starts with: its arguments and ways to measure its own memory.
PRELUDE = r'''
import json, os, resource, sys, threading, time
ARGS = json.loads(sys.argv[1])


def rss_mib():
    """This process's resident set now, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib():
    """This process's peak resident set so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreePss:
    """Peak PSS of this process and all its descendants (Ray's GCS, raylet with its object store, workers),
    sampled every ``every_s``: PSS shares out pages mapped by several processes, so the sum is real memory."""

    def __init__(self, every_s=1.0):
        self.every_s, self.peak, self._stop = every_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())
        return self.peak

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.sample())

    @staticmethod
    def sample():
        children = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        todo, total = [os.getpid()], 0
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            except OSError:
                pass
        return total / 1024


def start_ray():
    """A local Ray instance of 2 CPUs, quiet; the seconds it took."""
    started = time.perf_counter()
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - started


def emit(result):
    print("''' + MARKER + r'''" + json.dumps(result), flush=True)
'''

# The code before issue 17: its whole manifest read, duplicate-id check included, as the driver runs it.
BEFORE_STARTUP = r'''
init_s = start_ray()
import ray
start = time.perf_counter()
import pipeline
import pipeline.manifest as manifest
import_s = time.perf_counter() - start
rss_before, peak_before = rss_mib(), peak_mib()
tree = TreePss().start()
start = time.perf_counter()
ds = manifest.read_manifests([ARGS["uri"]], "auto", {}, None)
seconds = time.perf_counter() - start
tree_peak = tree.stop()
limit = getattr(manifest, "SMALL_MANIFESTS_BYTES", None)
emit({"seconds": seconds, "peak_rss_mib": peak_mib(), "rss_before_mib": rss_before,
      "peak_rss_before_mib": peak_before, "rss_after_mib": rss_mib(), "tree_peak_pss_mib": tree_peak,
      "rows_read": ds.count(), "ray_init_s": init_s, "import_s": import_s, "code": pipeline.__file__,
      "read_by": None if limit is None else ("driver" if os.path.getsize(ARGS["uri"]) <= limit else "ray")})
ray.shutdown()
'''

# A finished output folder in the layout before issue 17, made with that code's own schema and names.
BEFORE_SYNTHESIZE = r'''
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import pipeline
from pipeline.index import INDEX_DIR, conform, index_schema
from pipeline.jobfile import build_spec
from pipeline.naming import OutputLayout
from pipeline.outdir import IMAGES_DIR, write_job_record
from pipeline.preflight import preflight

spec = build_spec(ARGS["spec"])
plan = preflight(spec)
out, done, per = Path(spec.output.uri), ARGS["done"], ARGS["rows_per_file"]
layout = OutputLayout.of_job(spec.public_dict())
schema = index_schema(spec.output.embed_images, plan.label_names)
t0, sampling = spec.sampling.t0_values[0], spec.sampling
(out / INDEX_DIR).mkdir(parents=True)
(out / IMAGES_DIR).mkdir()
rng = np.random.default_rng(0)
start = time.perf_counter()
for n, lo in enumerate(range(0, done, per)):
    k = min(done, lo + per) - lo
    ids = [f"item-{i:09d}" for i in range(lo, lo + k)]
    images = [layout.image_path(item_id, t0, 0) for item_id in ids]
    for rel in images:
        open(out / rel, "wb").close()
    given = {
        "id": ids, "sample": [0] * k, "image": images, "guide": [ARGS["guide"]] * k, "t0": [t0] * k,
        "sampler": [sampling.sampler] * k, "steps": [plan.steps] * k, "passes": [sampling.passes] * k,
        "seed": [sampling.seed] * k, "model": [plan.label] * k, "width": [plan.width] * k,
        "height": [plan.height] * k, "status": ["ok"] * k, "faithfulness_l2": rng.random(k),
        "duration_ms": rng.random(k) * 100, "generator_seed": rng.integers(0, 2**62, k),
        "model_calls": [plan.steps] * k, "workflow": ["guide"] * k,
    }
    table = pa.table({name: pa.array(values, schema.field(name).type) for name, values in given.items()})
    pq.write_table(conform(table, spec.output.embed_images, plan.label_names),
                   out / INDEX_DIR / f"0123456789ab-{n:06d}-0000.parquet")
write_job_record(spec, {"status": "finished", "model": plan.describe(), "summary": {"outputs": done}})
emit({"label": plan.label, "synthesize_s": time.perf_counter() - start, "index_files": n + 1,
      "code": pipeline.__file__})
'''

# The code before issue 17: what the driver does to resume, and what the decode tasks then receive.
BEFORE_RESUME = r'''
import pickle
from pathlib import Path

import pipeline
from pipeline.jobfile import build_spec
from pipeline.resume import completed_outputs

spec = build_spec(ARGS["spec"])
rss_before, peak_before = rss_mib(), peak_mib()
start = time.perf_counter()
done = completed_outputs(spec, ARGS["label"])
seconds = time.perf_counter() - start
peak = peak_mib()
start = time.perf_counter()
blob = pickle.dumps(done)
dumps_s = time.perf_counter() - start
start = time.perf_counter()
pickle.loads(blob)
loads_s = time.perf_counter() - start
emit({"seconds": seconds, "outputs_found": len(done), "peak_rss_mib": peak, "rss_before_mib": rss_before,
      "peak_rss_before_mib": peak_before, "pickled_bytes": len(blob), "pickle_dumps_s": dumps_s,
      "pickle_loads_s": loads_s, "index_files_after": len(list((Path(spec.output.uri) / "index").iterdir())),
      "code": pipeline.__file__})
'''


# The same driver work in the sharded code (issue 17): plan shards (offsets, no rows), check ids (a
# distributed group-by for large manifests) and build the lazy dataset of pending shards.
AFTER_STARTUP = r'''
init_s = start_ray()
import ray
start = time.perf_counter()
import pipeline
from pipeline.naming import OutputLayout
from pipeline.resume import WorkPlan
from pipeline.shards import plan_shards
from pipeline.source import SMALL_MANIFEST_ROWS, ReadSettings, open_manifest
from pipeline.spec import SamplingSpec
import_s = time.perf_counter() - start
rss_before, peak_before = rss_mib(), peak_mib()
tree = TreePss().start()
start = time.perf_counter()
shards = plan_shards([ARGS["uri"]], "auto", {}, ARGS.get("shard_rows", 10_000))
plan_s = time.perf_counter() - start
ds = open_manifest(shards, WorkPlan(pending=shards, shards=len(shards)),
                   ReadSettings(sampling=SamplingSpec(t0=0.5), layout=OutputLayout()), 8)
seconds = time.perf_counter() - start
tree_peak = tree.stop()
rows = sum(s.rows for s in shards)
emit({"seconds": seconds, "plan_shards_s": plan_s, "shards": len(shards), "peak_rss_mib": peak_mib(),
      "rss_before_mib": rss_before, "peak_rss_before_mib": peak_before, "rss_after_mib": rss_mib(),
      "tree_peak_pss_mib": tree_peak, "rows_planned": rows, "ray_init_s": init_s, "import_s": import_s,
      "code": pipeline.__file__, "read_by": "driver" if rows <= SMALL_MANIFEST_ROWS else "ray"})
ray.shutdown()
'''

# A finished output of `done` outputs in the sharded layout: each shard's rows written as a part file
# and finished by the code's own finish_shard (index file + record). No image files: a resume of the
# sharded layout never lists a finished shard's images (the flat layout's resume lists every one).
AFTER_SYNTHESIZE = r'''
from pathlib import Path

import pyarrow.parquet as pq

import pipeline
from pipeline.finalize import FinishSettings, finish_shard
from pipeline.index import to_index_table
from pipeline.jobfile import build_spec
from pipeline.outdir import write_job_record
from pipeline.preflight import preflight
from pipeline.shards import plan_shards
from pipeline.write import part_dir

spec = build_spec(ARGS["spec"])
plan = preflight(spec)
start = time.perf_counter()
out = Path(spec.output.uri)
out.mkdir(parents=True, exist_ok=True)
write_job_record(spec, {"status": "finished", "model": plan.describe()})
layout, t0 = spec.layout, spec.sampling.t0_values[0]
settings = FinishSettings(out_uri=str(out), layout=layout, embed_images=False,
                          rows_per_file=spec.output.rows_per_index_file, run_id="synthesized")
finished = 0
for s in plan_shards(spec.input.manifests, "auto", {}, spec.input.shard_rows):
    if s.stop > ARGS["done"]:
        break
    rows = [{"id": f"item-{i:09d}", "shard": s.name, "sample": 0, "t0": t0, "status": "ok",
             "image": layout.image_path(s.name, f"item-{i:09d}", t0, 0), "guide": ARGS["guide"],
             "model": plan.label, "width": plan.width, "height": plan.height, "steps": plan.steps,
             "sampler": spec.sampling.sampler, "passes": 1, "seed": 0, "workflow": "guide"}
            for i in range(s.start, s.stop)]
    (out / part_dir(s.name)).mkdir(parents=True, exist_ok=True)
    pq.write_table(to_index_table(rows), out / part_dir(s.name) / "synthesized-0.parquet")
    finish_shard(s.as_item(), settings)
    finished += 1
emit({"synthesize_s": time.perf_counter() - start, "label": plan.label, "shards_finished": finished,
      "code": pipeline.__file__})
'''

# A whole `run_job` (the driver of `sdedit run`, after the CLI's imports and ray.init).
AFTER_RUN = r'''
import json
from pathlib import Path

start_ray()
import ray
import pipeline
from pipeline.jobfile import build_spec
from pipeline.run import run_job

spec = build_spec(ARGS["spec"])
rss_before = rss_mib()
start = time.perf_counter()
summary = run_job(spec, sheet=False)
seconds = time.perf_counter() - start
record = json.loads((Path(spec.output.uri) / "job.json").read_text())
emit({"seconds": seconds, "peak_rss_mib": peak_mib(), "rss_before_mib": rss_before, "outputs": summary.outputs,
      "resumed_outputs": summary.resumed_outputs, "items_run": summary.items_run, "phases_s": record["phases_s"],
      "code": pipeline.__file__})
ray.shutdown()
'''


def run_snippet(body: str, code_root: Path | str, args: dict[str, Any], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Run ``PRELUDE + body`` in a fresh interpreter with ``PYTHONPATH=code_root``; its ``emit``-ed result.

    The snippet sees ``args`` as ``ARGS``. ``-P`` keeps the working folder off ``sys.path``, so the
    ``pipeline`` imported is ROOT's whatever the caller's folder. Always returns a dict: the result
    with ``status: ok``, or ``status`` ``did not finish`` (past ``timeout_s``: its whole process group
    is killed, Ray's processes included), ``out of memory`` (killed by SIGKILL, or a MemoryError /
    Ray OutOfMemoryError), or ``failed``, with the end of its stderr; ``wall_s`` either way.
    """
    env = {**os.environ, "PYTHONPATH": str(code_root), "RAY_DEDUP_LOGS": "0"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-P", "-c", PRELUDE + body, json.dumps(args)], env=env,
                            cwd=str(code_root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "did not finish", "timeout_s": timeout_s, "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    found = [line[len(MARKER):] for line in stdout.splitlines() if line.startswith(MARKER)]
    if found:
        return {"status": "ok", **json.loads(found[-1]), "wall_s": wall}
    oom = proc.returncode == -signal.SIGKILL or "MemoryError" in stderr or "OutOfMemoryError" in stderr
    return {"status": "out of memory" if oom else "failed", "returncode": proc.returncode,
            "stderr_tail": stderr[-2000:], "wall_s": wall}


def manifest_rows(path: Path) -> int:
    """Rows in a manifest written by :func:`make_manifest` (Parquet: from its footer; CSV: lines - header)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            lines += chunk.count(b"\n")
    return lines - 1


def _row_group(lo: int, hi: int, guide: str) -> Any:
    """Rows lo..hi-1 as one Arrow table, built by Arrow compute (no Python string per row)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(lo, hi, dtype=np.int64)), pa.string()), width=9, padding="0")
    ids = pc.binary_join_element_wise(pa.scalar("item-"), digits, "")
    return pa.table({"id": ids, "guide": pa.repeat(pa.scalar(guide), hi - lo)})


def make_manifest(rows: int, folder: Path, fmt: str = "parquet") -> Path:
    """``folder/manifest-<rows>.<fmt>``: ids ``item-%09d``, each guide the relative path of one sample PNG
    copied into ``folder``; the same bytes every time, reused when it exists with ``rows`` rows.

    Written one row group of :data:`ROW_GROUP` rows at a time, to a temporary name renamed at the end
    (a killed write is never reused).
    """
    import pyarrow as pa

    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be parquet or csv, not {fmt!r}")
    folder.mkdir(parents=True, exist_ok=True)
    guide = folder / GUIDE.name
    if not guide.exists():
        shutil.copyfile(GUIDE, guide)
    path = folder / f"manifest-{rows}.{fmt}"
    if path.exists() and manifest_rows(path) == rows:
        return path
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    schema = pa.schema([("id", pa.string()), ("guide", pa.string())])
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, schema) as writer:
                for lo in range(0, rows, ROW_GROUP):
                    writer.write_table(_row_group(lo, min(rows, lo + ROW_GROUP), guide.name),
                                       row_group_size=ROW_GROUP)
        else:
            import pyarrow.csv as pacsv

            with pacsv.CSVWriter(tmp, schema, write_options=pacsv.WriteOptions(quoting_style="none")) as writer:
                for lo in range(0, rows, ROW_GROUP):
                    writer.write_table(_row_group(lo, min(rows, lo + ROW_GROUP), guide.name))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def timed_manifest(rows: int, folder: Path, fmt: str = "parquet") -> dict[str, Any]:
    """:func:`make_manifest` with its time, size and whether an existing file was reused."""
    path = folder / f"manifest-{rows}.{fmt}"
    reused = path.exists() and manifest_rows(path) == rows
    start = time.perf_counter()
    path = make_manifest(rows, folder, fmt)
    seconds = time.perf_counter() - start
    return {"kind": "manifest", "rows": rows, "format": fmt, "path": str(path), "seconds": seconds,
            "bytes": path.stat().st_size, "reused": reused}


def startup(code_root: Path, rows: int, folder: Path = FOLDER, timeout_s: float = TIMEOUT_S,
            snippet: str | None = None) -> dict[str, Any]:
    """The driver's manifest read (``snippet``) of a ``rows``-row Parquet manifest, in a fresh process;
    by default the sharded code's (AFTER_STARTUP) when ``code_root`` has pipeline/shards.py."""
    uri = str(make_manifest(rows, folder))
    if snippet is None:
        snippet = AFTER_STARTUP if (Path(code_root) / "pipeline" / "shards.py").exists() else BEFORE_STARTUP
    load = round(os.getloadavg()[0], 2)
    result = run_snippet(snippet, code_root, {"uri": uri}, timeout_s)
    return {"kind": "startup", "code_root": str(code_root), "rows": rows, "manifest": uri,
            "load_avg_1m": load, **result}


def resume_spec(folder: Path, out: Path) -> dict[str, Any]:
    """The job (as plain data) whose finished output is synthesized and then resumed: bundled model,
    one sample per item at t0 0.5 (``sampling`` and ``model`` are what resume checks against job.json)."""
    return {
        "input": {"manifest": str(make_manifest(1000, folder))},
        "output": {"uri": str(out), "if_exists": "resume", "sheet_items": 0,
                   "rows_per_index_file": INDEX_ROWS_PER_FILE},
        "model": {"uri": "fashion-mnist-ddpm"},
        "sampling": {"t0": 0.5, "samples": 1, "seed": 0},
        "resources": {"actors": 1, "batch_size": 64},
    }


def room_for(folder: Path, outputs: int) -> str | None:
    """Why ``outputs`` files (plus their index) do not fit on ``folder``'s disk; None when they do."""
    st = os.statvfs(folder)
    inodes, free = st.f_favail, st.f_bavail * st.f_frsize
    need_inodes, need_bytes = 2 * outputs + 10_000, 300 * outputs + 2 * 2**30  # index, directory, margin
    if inodes < need_inodes:
        return f"{inodes} free inodes, {need_inodes} needed"
    if free < need_bytes:
        return f"{free / 2**30:.1f} GiB free, {need_bytes / 2**30:.1f} GiB needed"
    return None


def resume_before(code_root: Path, done: int, folder: Path = FOLDER,
                  timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Resume of a finished ``done``-output job in the flat layout of the code at ``code_root``
    (before issue 17): synthesize it, time ``completed_outputs`` in a fresh process, delete it."""
    record: dict[str, Any] = {"kind": "resume", "code_root": str(code_root), "done": done}
    folder.mkdir(parents=True, exist_ok=True)
    why = room_for(folder, done)
    if why:
        return {**record, "status": f"skipped: {why}"}
    out = folder / f"resume-before-{done}"
    shutil.rmtree(out, ignore_errors=True)
    spec = resume_spec(folder, out)
    try:
        made = run_snippet(BEFORE_SYNTHESIZE, code_root, {
            "spec": spec, "done": done, "rows_per_file": INDEX_ROWS_PER_FILE, "guide": str(folder / GUIDE.name)},
            timeout_s)
        if made["status"] != "ok":
            return {**record, "status": f"synthesis {made['status']}", "synthesis": made}
        load = round(os.getloadavg()[0], 2)
        result = run_snippet(BEFORE_RESUME, code_root, {"spec": spec, "label": made["label"]}, timeout_s)
        return {**record, "load_avg_1m": load, "synthesize_s": made["synthesize_s"],
                "index_files": made["index_files"], "label": made["label"], **result}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def after_spec(manifest: Path, out: Path, shard_rows: int = 10_000) -> dict[str, Any]:
    """The job the sharded resume is measured with: the bundled model and a trivial model stage (t0 0.05,
    one ancestral step: about 120 outputs/s on 2 cores), so the new items' time stays minutes."""
    return {
        "input": {"manifest": str(manifest), "shard_rows": shard_rows},
        "output": {"uri": str(out), "if_exists": "resume", "sheet_items": 0, "progress": False},
        "model": {"uri": "fashion-mnist-ddpm"},
        "sampling": {"t0": 0.05, "sampler": "ancestral", "steps": 1, "samples": 1, "seed": 0},
        "resources": {"actors": 1, "batch_size": 64, "num_cpus": 1},
    }


def rows_of(source: Path, start: int, stop: int, target: Path) -> Path:
    """Rows [start, stop) of a manifest, as their own manifest (the new items alone)."""
    import pyarrow.parquet as pq

    if not target.exists() or manifest_rows(target) != stop - start:
        pq.write_table(pq.read_table(source).slice(start, stop - start), target)
    return target


def resume_after(code_root: Path, done: int, new: int, folder: Path = FOLDER,
                 timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """A finished ``done``-output job (sharded layout) resumed with ``new`` items appended to its
    manifest, against a clean run of the ``new`` items alone; both as whole ``run_job`` calls."""
    record: dict[str, Any] = {"kind": "resume-after", "code_root": str(code_root), "done": done, "new": new}
    grown = make_manifest(done + new, folder)
    out, alone = folder / f"resume-after-{done}", folder / f"new-alone-{new}"
    nightly = folder / "nightly.parquet"  # one manifest file that grows: its shards keep their names
    for path in (out, alone):
        shutil.rmtree(path, ignore_errors=True)
    try:
        made = run_snippet(AFTER_SYNTHESIZE, code_root, {
            "spec": after_spec(rows_of(grown, 0, done, nightly), out), "done": done,
            "guide": str(folder / GUIDE.name)}, timeout_s)
        if made["status"] != "ok":
            return {**record, "status": f"synthesis {made['status']}", "synthesis": made}
        load = round(os.getloadavg()[0], 2)
        rows_of(grown, 0, done + new, nightly)  # the manifest grew by `new` rows since the finished run
        resumed = run_snippet(AFTER_RUN, code_root, {"spec": after_spec(nightly, out)}, timeout_s)
        only_new = run_snippet(AFTER_RUN, code_root, {"spec": after_spec(
            rows_of(grown, done, done + new, folder / f"new-{done}-{new}.parquet"), alone)}, timeout_s)
        return {**record, "load_avg_1m": load, "synthesize_s": made.get("synthesize_s"),
                "status": "ok" if resumed["status"] == only_new["status"] == "ok" else "failed",
                "resume": resumed, "new_alone": only_new}
    finally:
        for path in (out, alone):
            shutil.rmtree(path, ignore_errors=True)


def resume_before_run(code_root: Path, done: int, new: int, folder: Path = FOLDER,
                      timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """The flat layout's whole ``run_job`` resume (the code before issue 17) of a finished ``done``-output
    job whose manifest grew by ``new`` rows, against a clean run of the ``new`` items alone: the same
    job and trivial model stage as :func:`resume_after`, so the two differences compare."""
    record: dict[str, Any] = {"kind": "resume-before-run", "code_root": str(code_root), "done": done, "new": new}
    why = room_for(folder, done)
    if why:
        return {**record, "status": f"skipped: {why}"}
    grown = make_manifest(done + new, folder)
    out, alone = folder / f"resume-before-run-{done}", folder / f"new-alone-before-{new}"

    def spec(manifest: Path, uri: Path) -> dict[str, Any]:
        data = after_spec(manifest, uri)
        data["input"].pop("shard_rows")
        data["output"]["rows_per_index_file"] = INDEX_ROWS_PER_FILE
        return data

    for path in (out, alone):
        shutil.rmtree(path, ignore_errors=True)
    try:
        made = run_snippet(BEFORE_SYNTHESIZE, code_root, {
            "spec": spec(grown, out), "done": done, "rows_per_file": INDEX_ROWS_PER_FILE,
            "guide": str(folder / GUIDE.name)}, timeout_s)
        if made["status"] != "ok":
            return {**record, "status": f"synthesis {made['status']}", "synthesis": made}
        load = round(os.getloadavg()[0], 2)
        resumed = run_snippet(AFTER_RUN, code_root, {"spec": spec(grown, out)}, timeout_s)
        only_new = run_snippet(AFTER_RUN, code_root, {"spec": spec(
            rows_of(grown, done, done + new, folder / f"new-{done}-{new}.parquet"), alone)}, timeout_s)
        return {**record, "load_avg_1m": load, "synthesize_s": made.get("synthesize_s"),
                "status": "ok" if resumed["status"] == only_new["status"] == "ok" else "failed",
                "resume": resumed, "new_alone": only_new}
    finally:
        for path in (out, alone):
            shutil.rmtree(path, ignore_errors=True)


def table(records: list[dict[str, Any]]) -> str:
    """Markdown tables of the startup and resume records (any code root), in the order given."""
    def number(r: dict[str, Any], key: str, form: str = ".0f", scale: float = 1.0) -> str:
        return format(r[key] / scale, form) if key in r else ""

    lines = ["| code | manifest rows | read by | seconds | driver peak RSS (MiB) | RSS before (MiB) | "
             "all processes peak PSS (MiB) |", "|---|---|---|---|---|---|---|"]
    for r in (r for r in records if r.get("kind") == "startup"):
        seconds = number(r, "seconds", ".1f") if r["status"] == "ok" else r["status"]
        lines.append(f"| {r['code_root']} | {r['rows']:,} | {r.get('read_by') or ''} | {seconds} | "
                     f"{number(r, 'peak_rss_mib')} | {number(r, 'rss_before_mib')} | "
                     f"{number(r, 'tree_peak_pss_mib')} |")
    lines += ["", "| code | done outputs | seconds | driver peak RSS (MiB) | RSS before (MiB) | "
              "pickled done-set (MiB) | unpickle (s) |", "|---|---|---|---|---|---|---|"]
    for r in (r for r in records if r.get("kind") == "resume"):
        seconds = number(r, "seconds", ".1f") if r["status"] == "ok" else r["status"]
        lines.append(f"| {r['code_root']} | {r['done']:,} | {seconds} | {number(r, 'peak_rss_mib')} | "
                     f"{number(r, 'rss_before_mib')} | {number(r, 'pickled_bytes', '.1f', 2**20)} | "
                     f"{number(r, 'pickle_loads_s', '.2f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("manifest", "startup", "resume-before", "resume-after", "resume-before-run"):
        s = sub.add_parser(name)
        s.add_argument("--folder", type=Path, default=FOLDER, help="manifests and synthesized outputs")
        s.add_argument("--log", type=Path, default=None, help="append results here as JSON lines")
        s.add_argument("--timeout-s", type=float, default=TIMEOUT_S, help="per size")
        if name != "manifest":
            s.add_argument("--code-root", type=Path, required=True, help="PYTHONPATH of the code measured")
    sub.choices["manifest"].add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    sub.choices["manifest"].add_argument("--format", choices=("parquet", "csv"), default="parquet")
    sub.choices["startup"].add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    sub.choices["resume-before"].add_argument("--done", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    sub.choices["resume-after"].add_argument("--done", type=int, nargs="+", default=[1_000_000])
    sub.choices["resume-after"].add_argument("--new", type=int, default=10_000)
    sub.choices["resume-before-run"].add_argument("--done", type=int, nargs="+", default=[100_000])
    sub.choices["resume-before-run"].add_argument("--new", type=int, default=1_000)
    sub.add_parser("table").add_argument("log", type=Path)
    args = p.parse_args(argv)

    if args.command == "table":
        print(table([json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]))
        return []
    info = machine()
    print(f"machine: {describe(info)}")
    log = open(args.log, "a") if args.log else None  # one line per result, as it comes

    def record(r: dict[str, Any]) -> None:
        print(json.dumps(r), flush=True)
        if log:
            log.write(json.dumps(r) + "\n")
            log.flush()

    record({"kind": "machine", "command": " ".join(sys.argv), **info})
    results: list[dict[str, Any]] = []

    def keep(r: dict[str, Any]) -> None:
        results.append(r)
        record(r)

    try:
        if args.command == "manifest":
            for n in args.rows:
                keep(timed_manifest(n, args.folder, args.format))
        elif args.command == "startup":
            for n in args.rows:
                made = timed_manifest(n, args.folder)
                if not made["reused"]:  # a manifest made here is timed on its own, before the run
                    keep(made)
                keep(startup(args.code_root.resolve(), n, args.folder, args.timeout_s))
        elif args.command == "resume-before-run":
            for n in args.done:
                keep(resume_before_run(args.code_root.resolve(), n, args.new, args.folder, args.timeout_s))
        elif args.command == "resume-after":
            for n in args.done:
                keep(resume_after(args.code_root.resolve(), n, args.new, args.folder, args.timeout_s))
        else:
            for n in args.done:
                keep(resume_before(args.code_root.resolve(), n, args.folder, args.timeout_s))
    finally:
        if log:
            log.close()
    return results


if __name__ == "__main__":
    main()
