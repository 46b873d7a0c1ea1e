"""The stages as plain functions and classes, without Ray: decode, the model actor, write, names."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from sdedit_testing import SIZE, decode_settings, manifest_table  # SIZE: the tiny model's sample size

from pipeline.actor import ActorSettings, SDEditor
from pipeline.decode import decode_batch
from pipeline.editing import EditSettings
from pipeline.images import WorkingSize, encode_image, fit_image, mask_bits
from pipeline.manifest import manifest_format, normalize_batch, resolved
from pipeline.naming import OutputLayout, image_relpath, member_key, safe_stem
from pipeline.redact import REDACTED, redact, redact_argv, strip_userinfo
from pipeline.spec import ModelSpec, OutputSpec, SamplingSpec
from pipeline.storage import resolve_relative, write_atomic
from pipeline.write import WriteSettings, write_batch


def _settings(**kw: Any) -> Any:
    return decode_settings(**kw)


def _manifest(rows: list[dict[str, Any]]) -> pa.Table:
    return manifest_table([{"shard": "s-00000", **r} for r in rows])


@pytest.mark.parametrize("policy, expected", [
    ("resize", None), ("center_crop", "middle"), ("pad", "bars"),
])
def test_fit_policies(policy: str, expected: str | None) -> None:
    wide = Image.new("L", (40, 20), 200)
    wide.paste(0, (0, 0, 10, 20))  # dark left quarter
    fitted = np.asarray(fit_image(wide, SIZE, SIZE, policy, Image.Resampling.NEAREST))
    assert fitted.shape == (SIZE, SIZE)
    if expected == "middle":  # scaled to height 16 (32 wide), the centre 16 columns: no dark quarter
        assert (fitted == 200).all()
    if expected == "bars":  # scaled to width 16, padded top and bottom with black
        assert (fitted[0] == 0).all() and (fitted[SIZE // 2, -1] == 200)


def test_mask_is_nearest_and_binarised() -> None:
    grey = np.zeros((8, 8), np.uint8)
    grey[:, 4:] = 130  # just above the threshold: edit
    grey[:, :2] = 127  # just below: keep
    bits = mask_bits(Image.fromarray(grey), (8, 8), WorkingSize(1, SIZE, SIZE))
    assert bits.shape == (SIZE, SIZE) and set(np.unique(bits)) == {0, 1}
    assert (bits[:, SIZE // 2:] == 1).all() and (bits[:, : SIZE // 2] == 0).all()


def test_decode_expands_samples_and_turns_failures_into_rows(data_dir: Path) -> None:
    img = data_dir / "img"
    table = _manifest([
        {"id": "a", "guide": str(img / "g0.png"), "samples": 3, "seed": 9},
        {"id": "b", "guide": str(img / "nope.png")},
        {"id": "c", "guide": str(img / "corrupt.png")},
        {"id": "d", "guide": str(img / "g3.png"), "mask": str(img / "corrupt.png")},
        {"id": "e", "guide": str(img / "g0.png"), "error": "bad override: t0=2 must be in (0, 1]",
         "error_kind": "bad override"},
    ])
    out = decode_batch(table, _settings()).to_pylist()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in out:
        by_id.setdefault(row["id"], []).append(row)
    assert [r["sample"] for r in by_id["a"]] == [0, 1, 2] and all(r["seed"] == 9 for r in by_id["a"])
    assert len({r["generator_seed"] for r in by_id["a"]}) == 3
    assert all(len(r["pixels"]) == SIZE * SIZE for r in by_id["a"])
    assert by_id["b"][0]["error"].startswith("missing guide") and len(by_id["b"]) == 2
    assert [by_id[i][0]["error_kind"] for i in "bcde"] == ["missing guide", "bad guide", "bad mask", "bad override"]
    assert by_id["c"][0]["error"].startswith("bad guide")
    assert by_id["d"][0]["error"].startswith("bad mask")
    assert by_id["e"][0]["error"].startswith("bad override") and by_id["e"][0]["pixels"] is None


def test_manifest_normalisation_resolves_relative_uris() -> None:
    raw = pa.table({
        "path": ["/data/m/manifest.csv"] * 3,
        "id": ["1", "2", "3"], "guide": ["img/a.png", "/abs/b.png", "s3://other/c.png"],
        "mask": [None, "../masks/a.png", ""], "t0": [0.3, None, float("nan")],
        "seed": ["12", None, "x"], "samples": [None, 2.0, 0],
    })
    given = normalize_batch(raw).to_pylist()
    assert [r["guide"] for r in given] == ["img/a.png", "/abs/b.png", "s3://other/c.png"]  # kept as given
    assert {r["manifest"] for r in given} == {"/data/m/manifest.csv"}
    rows = [resolved(r) for r in given]  # what decode reads
    assert rows[0]["guide"] == "/data/m/img/a.png" and rows[0]["t0"] == 0.3 and rows[0]["seed"] == 12
    assert rows[1]["guide"] == "/abs/b.png" and rows[1]["mask"] == "/data/masks/a.png"
    assert rows[1]["t0"] is None and rows[1]["samples"] == 2 and rows[1]["error"] is None
    assert rows[2]["guide"] == "s3://other/c.png" and rows[2]["mask"] is None
    assert "seed='x' is not an integer" in rows[2]["error"] and "samples=0" in rows[2]["error"]
    assert "t0=nan" in rows[2]["error"]  # an explicit NaN is an error; only an empty cell means "none"
    s3 = fsspec.filesystem("memory")
    raw = pa.table({"path": ["/bucket/m.csv"], "id": [7], "guide": ["g/a.png"]})
    rows = [resolved(r) for r in normalize_batch(raw, fs=s3).to_pylist()]
    assert rows[0]["id"] == "7" and rows[0]["guide"] == "memory:///bucket/g/a.png"


def test_json_lines_tolerate_mixed_types() -> None:
    raw = pa.table({"path": ["/m.jsonl"] * 3, "text": ['{"id": 1, "guide": "a.png", "t0": 0.3}',
                                                      '{"id": "x", "guide": "b.png"}', "not json"]})
    rows = normalize_batch(raw, json_lines=True).to_pylist()
    assert [r["id"] for r in rows] == ["1", "x", None] and rows[0]["t0"] == 0.3


def test_resolve_relative_and_formats() -> None:
    assert resolve_relative("s3://b/dir/m.parquet", "../x/g.png") == "s3://b/x/g.png"
    assert resolve_relative("gs://b/m.csv", "g.png") == "gs://b/g.png"
    assert manifest_format("s3://b/m.jsonl.gz") == "jsonl" and manifest_format("x.pq") == "parquet"
    with pytest.raises(ValueError, match="input.format"):
        manifest_format("m.txt")


def test_safe_names() -> None:
    ids = ["a/b", "a_b", "..", "../../etc/passwd", "Ünïcode", "x" * 500, "CON", "", "tshirt-01", "Tshirt-01"]
    names = [image_relpath("m-00000", i, 0, "png") for i in ids]
    assert len(set(names)) == len(names)
    for name in names:
        stem = name[len("images/m-00000/"):]
        assert "/" not in stem and not stem.startswith(".") and len(stem) < 100 and stem.isascii()
    assert safe_stem("tshirt-01") == "tshirt-01"
    assert image_relpath("m-00000", "x", 2, "jpeg") == "images/m-00000/x_s2.jpg"
    assert image_relpath(None, "x", 2, "jpeg") == "images/x_s2.jpg"  # the flat layout before shards
    keys = [member_key(i, 0) for i in [*ids, "a.c", "a_c"]]  # WebDataset keys: no dot, unique
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)


def test_redaction() -> None:
    assert redact({"key": "a", "anon": True, "nested": {"password": "p", "region": "eu"}}) == {
        "key": REDACTED, "anon": True, "nested": {"password": REDACTED, "region": "eu"}}
    assert strip_userinfo("s3://AKIA:secret@bucket/k") == f"s3://{REDACTED}@bucket/k"
    assert redact_argv(["run", "storage_options.secret=xyz", "sampling.t0=0.3"]) == [
        "run", f"storage_options.secret={REDACTED}", "sampling.t0=0.3"]


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    write_atomic(fs, str(tmp_path / "images" / "a.png"), b"data")
    write_atomic(fs, str(tmp_path / "images" / "a.png"), b"new")
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["a.png"]
    assert (tmp_path / "images" / "a.png").read_bytes() == b"new"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_formats(fmt: str) -> None:
    pixels = np.tile(np.arange(SIZE, dtype=np.uint8)[None, :, None] * 15, (SIZE, 1, 1))
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(pixels, fmt, 90))).convert("L"))
    assert decoded.shape == (SIZE, SIZE)
    if fmt == "png":
        np.testing.assert_array_equal(decoded, pixels[:, :, 0])


def test_actor_is_batch_invariant_and_isolates_failures(tiny_model: Path, data_dir: Path,
                                                        tmp_path: Path) -> None:
    img = data_dir / "img"
    work = decode_batch(_manifest([
        {"id": "a", "guide": str(img / "g0.png")},
        {"id": "b", "guide": str(img / "g1.png"), "t0": 0.2},
        {"id": "m", "guide": str(img / "g3.png"), "mask": str(img / "m3.png")},
        {"id": "x", "guide": str(img / "nope.png")},
    ]), _settings())
    sampling = SamplingSpec(t0=0.1, sampler="ancestral", steps=3)
    editor = SDEditor(ActorSettings(EditSettings(
        model=ModelSpec(uri=str(tiny_model)), sampling=sampling, working=WorkingSize(1, SIZE, SIZE))))
    whole = editor(work).to_pylist()
    single = [editor(work.slice(i, 1)).to_pylist()[0] for i in range(work.num_rows)]
    for a, b in zip(whole, single, strict=True):
        assert a["output"] == b["output"] and a["status"] == b["status"]
    assert [r["status"] for r in whole].count("error") == 2 and whole[-1]["output"] is None
    assert {r["t0"] for r in whole if r["id"] == "b"} == {0.2}
    written = write_batch(editor(work), WriteSettings(
        output=OutputSpec(uri=str(tmp_path)), sampling=sampling, working=WorkingSize(1, SIZE, SIZE),
        layout=OutputLayout(), run_id="r1")).to_pylist()
    assert written == [{"shard": "s-00000", "outputs": 8}]
    parts = list((tmp_path / ".work" / "s-00000").glob("r1-*.parquet"))  # the batch's index rows, one part
    index = pd.read_parquet(parts[0]).to_dict("records")
    assert len(parts) == 1 and sum(r["status"] == "ok" for r in index) == 6
    assert all((tmp_path / r["image"]).exists() and r["image"].startswith("images/s-00000/")
               for r in index if r["status"] == "ok")


def test_job_records_written_before_the_renames_read_under_the_new_names(tmp_path: Path) -> None:
    import json

    from pipeline.outdir import read_job_record

    (tmp_path / "job.json").write_text(json.dumps({"spec": {"input": {"resize": "pad"},
                                                            "sampling": {"samples_per_item": 3}}}))
    spec = read_job_record(str(tmp_path))["spec"]
    assert spec["input"] == {"fit": "pad"} and spec["sampling"] == {"samples": 3}
