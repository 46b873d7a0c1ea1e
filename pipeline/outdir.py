"""The output folder: refuse or clear a used one, and keep ``OUT/job.json`` (how the outputs were made).

job.json holds the resolved spec with credentials redacted, the model identity, the package versions
and, once the run ends, its summary: enough to reproduce or audit every output without the job file.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from pipeline.index import INDEX_DIR
from pipeline.naming import IMAGES_DIR, INPUTS_DIR, WEBDATASET_DIR
from pipeline.redact import redact_argv, strip_userinfo
from pipeline.spec import RENAMED, JobSpec
from pipeline.storage import join_uri, url_to_fs, write_atomic

JOB_FILE = "job.json"
CARD_FILE = "README.md"  # the dataset card: `datasets.load_dataset(OUT)` reads the index, not the pictures
SHEET_FILE = "sheet.png"
SWEEP_SHEET_FILE = "sweep_sheet.png"  # t0 sweeps only (pipeline.sweep)
SWEEP_PLOT_FILE = "sweep_faithfulness.png"
LAYOUT = "shards-1"  # job.json's "layout": outputs by shard (pipeline.shards); absent: the flat layout before it
RECORDS_DIR = "shards"  # OUT/shards/<shard>.json: a shard's record, written when it is finished
WORK_DIR = ".work"  # OUT/.work/<shard>/: an unfinished shard's index parts (and staged WebDataset images)
_PACKAGES = (
    "sdedit-pipeline", "torch", "diffusers", "ray", "pyarrow", "numpy", "pillow", "fsspec", "pydantic",
)


class OutputExistsError(ValueError):
    """The output folder already holds results and ``output.if_exists`` is ``error``."""


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def check_output(spec: JobSpec) -> None:
    """Raise :class:`OutputExistsError` when OUT holds outputs and ``output.if_exists`` is error."""
    fs, root = url_to_fs(spec.output.uri, spec.options_for("output"))
    used = [name for name in (INDEX_DIR, IMAGES_DIR, RECORDS_DIR, WEBDATASET_DIR, WORK_DIR)
            if _non_empty(fs, join_uri(root, name))]
    if used and spec.output.if_exists == "error":
        raise OutputExistsError(
            f"output.uri: {spec.output.uri} already holds {' and '.join(used)}/; set "
            "output.if_exists=overwrite or resume (e.g. --set output.if_exists=resume) or pick another "
            "output.uri"
        )


def prepare_output(spec: JobSpec) -> None:
    """Make sure the run starts from an empty output folder, as ``output.if_exists`` says."""
    check_output(spec)
    fs, root = url_to_fs(spec.output.uri, spec.options_for("output"))
    if spec.output.if_exists == "resume":
        fs.makedirs(root, exist_ok=True)
        return
    for name in (INDEX_DIR, IMAGES_DIR, INPUTS_DIR, RECORDS_DIR, WEBDATASET_DIR, WORK_DIR, JOB_FILE, CARD_FILE,
                 SHEET_FILE, SWEEP_SHEET_FILE, SWEEP_PLOT_FILE):
        path = join_uri(root, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs.makedirs(root, exist_ok=True)


def write_job_record(spec: JobSpec, details: Mapping[str, Any]) -> None:
    """Write (or rewrite) OUT/job.json atomically: the redacted spec, versions and ``details``."""
    record = {
        "spec": spec.public_dict(),
        "versions": versions(),
        "command": redact_argv(sys.argv),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layout": LAYOUT,
        **details,
    }
    fs, root = url_to_fs(spec.output.uri, spec.options_for("output"))
    write_atomic(fs, join_uri(root, JOB_FILE), (json.dumps(record, indent=2, default=str) + "\n").encode())


def write_dataset_card(spec: JobSpec, model: Mapping[str, Any], summary: Mapping[str, Any], run_id: str = "0") -> None:
    """OUT/README.md: a Hugging Face dataset card whose front matter points ``datasets`` at the index.

    Without it ``datasets.load_dataset(OUT)`` guesses the imagefolder loader and returns the contact
    sheets and plots as rows; with it, the index (one row per output, images embedded or as paths).
    """
    s, out = spec.sampling, spec.output
    if out.webdataset:
        image = ("packed per shard in `webdataset/<shard>.tar` (per output its image and its index row as "
                 "JSON; read them with `webdataset`, or `load_dataset(\"path/to/this/folder/webdataset\")`, whose "
                 "own card declares the JSON's types); the index's `image` column reads "
                 "`webdataset/<shard>.tar/<member>`" + (" and embeds the bytes" if out.embed_images else ""))
    else:
        image = ("embedded in the index (`image` decodes to a PIL image)" if out.embed_images else
                 "files under `images/<shard>/`; the index's `image` column holds their path relative to this "
                 "folder, and each shard's folder has `metadata.parquet` (its index rows, plus `file_name`), which "
                 "`datasets` reads to give `image` as a PIL image")
    # Image files: datasets' imagefolder loader over the images and each shard's metadata.parquet (it
    # opens file_name relative to the metadata file); otherwise the index itself.
    files = (f"{IMAGES_DIR}/*/*" if not out.embed_images and not out.webdataset else f"{INDEX_DIR}/*.parquet")
    text = f"""---
configs:
- config_name: {config_name(run_id)}
  data_files:
  - split: train
    path: {files}
tags:
- sdedit
---
# SDEdit outputs

Made by sdedit-pipeline (`{" ".join(["sdedit", *redact_argv(sys.argv)[1:]])}`): SDEdit (Meng et al., ICLR 2022) over the
guides of `{", ".join(strip_userinfo(m) for m in spec.input.manifests)}` with the model
`{model.get("label")}`, sampler `{s.sampler}`, t0 {s.t0}{f" ({s.t0_mode})" if isinstance(s.t0, list) else ""},
{s.samples} sample(s) per item, seed {s.seed}.

- outputs: {summary.get("outputs_ok")} ok of {summary.get("outputs")} from {summary.get("items")} items, in shards
  of {spec.input.shard_rows} manifest rows (`shards/<shard>.json`: each shard's counts)
  ({summary.get("items_failed")} items failed; the `status` and `error` columns say why)
- images: {image}
- `job.json`: the resolved job spec, model identity, versions and timings

```python
import datasets
ds = datasets.load_dataset("path/to/this/folder", split="train")   # the index, one row per output
ok = ds.filter(lambda r: r["status"] == "ok")
```
"""
    fs, root = url_to_fs(spec.output.uri, spec.options_for("output"))
    write_atomic(fs, join_uri(root, CARD_FILE), text.encode())
    if out.webdataset:
        write_atomic(fs, join_uri(root, WEBDATASET_DIR, CARD_FILE), _webdataset_card(out.format, run_id).encode())


def config_name(run_id: str) -> str:
    """The card's one config, named after the run that wrote it. ``datasets`` (5.x) caches a folder's
    dataset under (folder name, config name, a hash of the card's patterns): it does not look at the
    files, so two outputs in folders of one name, or an output that a resume has grown, would be read
    back from the cache of another. A name per run gives each its own cache; with one config,
    ``load_dataset(OUT)`` picks it without being told."""
    return f"sdedit-{run_id}"


def _webdataset_card(image_format: str, run_id: str) -> str:
    """OUT/webdataset/README.md: ``datasets.load_dataset(OUT/webdataset)`` with every JSON field typed.

    Without declared features ``datasets`` infers the JSON's types from a shard's first few samples,
    where a column that is null there (``mask``, ``error``) becomes a null type and a later value fails.
    """
    import yaml

    from pipeline.index import HF_DTYPES, INDEX_COLUMNS
    from pipeline.naming import EXTENSIONS
    from pipeline.rows import TYPES

    fields = [{"name": c, "dtype": "string" if c == "image" else HF_DTYPES[TYPES[c]]} for c in INDEX_COLUMNS]
    card = {
        "configs": [{"config_name": config_name(run_id), "data_files": [{"split": "train", "path": "*.tar"}]}],
        "dataset_info": {"config_name": config_name(run_id), "features": [
            {"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
            {"name": EXTENSIONS[image_format], "dtype": "image"}, {"name": "json", "struct": fields},
        ]},
    }
    return ("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n# SDEdit outputs as WebDataset shards\n\n"
            "One tar per shard of the job (`../shards/<shard>.json` has its counts); per output an image and "
            "a JSON file holding its index row (`../index/`).\n")


def read_job_record(out_uri: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """OUT/job.json; a spec field renamed since the record was written (input.resize -> input.fit) is
    read under its new name, so no reader of a record needs to know the old ones."""
    fs, root = url_to_fs(out_uri, options)
    with fs.open(join_uri(root, JOB_FILE), "rb") as f:
        record = json.loads(f.read())
    for (section, old_name), new_name in RENAMED.items():
        fields = record.get("spec", {}).get(section)
        if isinstance(fields, dict) and old_name in fields:
            fields.setdefault(new_name, fields.pop(old_name))
    return record


def _non_empty(fs: Any, path: str) -> bool:
    try:
        return fs.exists(path) and bool(fs.ls(path))
    except FileNotFoundError:
        return False
