"""Fixtures of the pipeline tests: guides, manifests, job specs and the reliability log.

Ray (``ray_session``), the tiny score model (``tiny_model``: a diffusers folder, 16x16, one channel,
a run takes seconds on a CPU) and ``SIZE`` come from tests/conftest.py.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sdedit_testing import SIZE


def _guide(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    """A blocky grey 'stroke painting' (few levels), deterministic per seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([0, 90, 180, 250], np.uint8), size=(4, 4))
    return Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.NEAREST)


# Items every end-to-end run shares: plain guides, an odd-sized one, a masked one, one with overrides.
GOOD_ITEMS = ["plain-0", "plain-1", "odd-size", "masked", "override"]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Guides and masks under ``data/img/``, manifests in ``data/`` with relative URIs."""
    root = tmp_path_factory.mktemp("data")
    img = root / "img"
    img.mkdir()
    _guide(0).save(img / "g0.png")
    _guide(1).save(img / "g1.png")
    _guide(2, (20, 24)).convert("RGB").save(img / "odd.png")  # other size and mode: fitted + converted
    _guide(3).save(img / "g3.png")
    mask = np.zeros((2 * SIZE, 2 * SIZE), np.uint8)  # twice the guide's size: resized nearest
    mask[:, SIZE:] = 200  # right half: edit (>= 128)
    mask[:, : SIZE // 2] = 100  # grey below 128: keep
    Image.fromarray(mask).save(img / "m3.png")
    (img / "corrupt.png").write_bytes(b"not a png at all")
    return root


def _manifest_rows(include_bad: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"id": "plain-0", "guide": "img/g0.png"},
        {"id": "plain-1", "guide": "img/g1.png"},
        {"id": "odd-size", "guide": "img/odd.png"},
        {"id": "masked", "guide": "img/g3.png", "mask": "img/m3.png"},
        {"id": "override", "guide": "img/g0.png", "t0": 0.2, "seed": 7, "samples": 3},
    ]
    if include_bad:
        rows += [
            {"id": "missing", "guide": "img/nope.png"},
            {"id": "corrupt", "guide": "img/corrupt.png"},
            {"id": "bad-t0", "guide": "img/g1.png", "t0": 2.0},
            {"id": "../weird/Ünïcode id", "guide": "img/g1.png"},
        ]
    return [{"id": r["id"], "guide": r["guide"], "mask": r.get("mask"), "t0": r.get("t0"),
             "seed": r.get("seed"), "samples": r.get("samples")} for r in rows]


def _write_manifest(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """Write rows as CSV, JSON Lines or Parquet, chosen by ``name``'s extension."""
    path = folder / name
    if name.endswith(".csv"):
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    elif name.endswith(".jsonl"):
        lines = [json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows]
        path.write_text("".join(line + "\n" for line in lines))
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


def _job_data(model: Path, manifest: Path | str, out: Path | str,
              **sections: dict[str, Any]) -> dict[str, Any]:
    """A job spec as plain data: tiny model, few steps; ``sections`` refine it."""
    data: dict[str, Any] = {
        "input": {"manifest": str(manifest)},
        "output": {"uri": str(out), "sheet_items": 4},
        "model": {"uri": str(model)},
        "sampling": {"t0": 0.1, "sampler": "ancestral", "steps": 3, "samples": 2, "seed": 11},
        "resources": {"actors": 1, "batch_size": 4, "num_cpus": 0.5},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Helpers reach the tests as fixtures, so no test module imports conftest by a package path.
@pytest.fixture(scope="session")
def manifest_rows() -> Any:
    return _manifest_rows


@pytest.fixture(scope="session")
def write_manifest() -> Any:
    return _write_manifest


@pytest.fixture(scope="session")
def job_data() -> Any:
    return _job_data


@pytest.fixture(scope="session")
def free_port() -> Any:
    return _free_port


@pytest.fixture(scope="session")
def record_outcome() -> Any:
    """``record_outcome(case, outcome, lost, duplicated)``: what a fault or bad-input test measured.

    With ``SDEDIT_RELIABILITY_LOG=path.jsonl`` set, each call appends one JSON line there;
    ``python tests/pipeline/reliability_table.py path.jsonl`` turns them into docs/reliability.md's table.
    """
    import os

    def record(case: str, outcome: str, lost: int, duplicated: int) -> None:
        path = os.environ.get("SDEDIT_RELIABILITY_LOG")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"case": case, "outcome": outcome, "lost": lost, "duplicated": duplicated}) + "\n")

    return record


# S3 on loopback: moto's server, shared by the S3 and lock tests.
S3_KEY, S3_SECRET = "AKIAMOTOTESTKEY", "moto-secret-value-1234"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, on a port the OS picks (no race for a 'free' port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str) -> tuple[Any, dict[str, str], str]:
    """(s3fs file system, storage options, a fresh bucket name) for one test."""
    import s3fs

    options = {"key": S3_KEY, "secret": S3_SECRET, "endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"sdedit-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    return fs, options, bucket
