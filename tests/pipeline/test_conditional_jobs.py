"""Class-conditional jobs: labels by index or name, guidance, t0 variants, embedded guides, preflight refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sdedit_testing import SIZE, decode_settings, manifest_table, tiny_unet

from pipeline.decode import decode_batch
from pipeline.editing import Editor, EditSettings
from pipeline.images import WorkingSize
from pipeline.jobfile import SpecError, build_spec
from pipeline.manifest import normalize_batch, resolved
from pipeline.run import preflight, run_job
from pipeline.spec import ModelSpec, SamplingSpec
from sdedit_kernel import ClassLabels, generator_for, load_score_model, sdedit, seed_for

NAMES = ["circle", "square", "stripe"]


def _save_conditional(folder: Path, null_label: int | None = 3) -> Path:
    from diffusers import DDPMScheduler

    tiny_unet(num_class_embeds=4, seed=5).save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(clip_sample=False).save_config(folder)
    labels: dict[str, Any] = {"names": NAMES}
    if null_label is not None:
        labels["null_label"] = null_label
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


@pytest.fixture(scope="module")
def cond_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_conditional(tmp_path_factory.mktemp("cond-model"))


@pytest.fixture(scope="module")
def cond_model_no_null(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_conditional(tmp_path_factory.mktemp("cond-model-no-null"), null_label=None)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.choice(np.array([0, 120, 240], np.uint8), size=(4, 4))).resize((SIZE, SIZE))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(records: list[dict[str, Any]], classes: ClassLabels | None) -> dict[str, dict[str, Any]]:
    table = pa.table({"text": [json.dumps(r) for r in records]})
    return {r["id"]: r for r in normalize_batch(table, json_lines=True, base="/data/m.jsonl",
                                                classes=classes).to_pylist()}


def test_labels_resolve_by_index_or_name_once_in_the_manifest_stage() -> None:
    classes = ClassLabels(4, tuple(NAMES), 3)
    rows = _rows([
        {"id": "by-index", "guide": "g.png", "label": 1},
        {"id": "by-name", "guide": "g.png", "label": "stripe"},
        {"id": "digits", "guide": "g.png", "label": "0"},
        {"id": "null", "guide": "g.png", "label": 3},
        {"id": "none", "guide": "g.png"},
        {"id": "unknown", "guide": "g.png", "label": "hexagon"},
        {"id": "range", "guide": "g.png", "label": 9},
        {"id": "guided", "guide": "g.png", "label": 0, "guidance_scale": 2.5},
        {"id": "bad-guidance", "guide": "g.png", "label": 0, "guidance_scale": -1},
    ], classes)
    assert (rows["by-index"]["label"], rows["by-index"]["label_name"]) == (1, "square")
    assert (rows["by-name"]["label"], rows["by-name"]["label_name"]) == (2, "stripe")
    assert rows["digits"]["label"] == 0 and rows["null"]["label"] == 3 and rows["null"]["label_name"] is None
    assert rows["none"]["label"] is None and rows["none"]["error"] is None
    assert rows["unknown"]["error_kind"] == "bad label" and "hexagon" in rows["unknown"]["error"]
    assert rows["range"]["error_kind"] == "bad label" and "out of range" in rows["range"]["error"]
    assert rows["guided"]["guidance_scale"] == 2.5 and rows["guided"]["error"] is None
    assert rows["bad-guidance"]["error"] == "bad override: guidance_scale=-1 must be between 0 and 100"


def test_label_problems_without_a_null_label_or_without_classes() -> None:
    no_null = _rows([{"id": "a", "guide": "g.png"}], ClassLabels(3, tuple(NAMES)))
    assert no_null["a"]["error_kind"] == "bad label" and "no null label" in no_null["a"]["error"]
    unconditional = _rows([{"id": "a", "guide": "g.png", "label": 1}], None)
    assert "not class-conditional" in unconditional["a"]["error"]


def test_embedded_image_column_as_datasets_writes_it() -> None:
    data = _png(1)
    table = pa.table({
        "path": ["/d/m.parquet"] * 3, "id": ["a", "b", "c"],
        "image": pa.array([{"bytes": data, "path": "a.png"}, {"bytes": None, "path": "rel/b.png"}, None],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "guide": [None, None, "c.png"],
    })
    rows = {r["id"]: resolved(r) for r in normalize_batch(table).to_pylist()}
    assert rows["a"]["guide_bytes"] == data and rows["a"]["guide"] is None and rows["a"]["error"] is None
    assert rows["b"]["guide"] == "/d/rel/b.png" and rows["b"]["guide_bytes"] is None  # a path: a guide URI
    assert rows["c"]["guide"] == "/d/c.png" and rows["c"]["error"] is None


def test_t0_modes_cycle_and_range() -> None:
    cycle = SamplingSpec(t0=[0.3, 0.5], t0_mode="cycle", samples=5)
    assert [cycle.t0s_for(k, 0) for k in range(5)] == [[0.3], [0.5], [0.3], [0.5], [0.3]]
    assert not cycle.sweep
    ranged = SamplingSpec(t0=[0.3, 0.6], t0_mode="range")
    draws = [ranged.t0s_for(0, seed)[0] for seed in range(200)]
    assert all(0.3 <= t <= 0.6 for t in draws) and len(set(draws)) > 150
    assert ranged.t0s_for(0, 123) == ranged.t0s_for(7, 123)  # a function of the output's own seed only
    bad_cases = [({"t0": 0.3, "t0_mode": "cycle"}, "t0_mode"), ({"t0": [0.3, 0.4, 0.5], "t0_mode": "range"}, "t0"),
                 ({"t0": [0.5, 0.3], "t0_mode": "range"}, "t0")]
    for bad, field in bad_cases:
        with pytest.raises(ValueError, match=field):
            SamplingSpec(**bad)


def test_decode_gives_each_variant_its_t0_label_and_guidance(tmp_path: Path) -> None:
    settings = decode_settings(samples=3, conditioning="class", out_uri=str(tmp_path))
    settings = type(settings)(**{**settings.__dict__, "sampling": SamplingSpec(
        t0=[0.2, 0.4], t0_mode="cycle", samples=3, guidance_scale=1.5)})
    table = manifest_table([
        {"id": "a", "guide_bytes": _png(2), "workflow": "guide", "label": 2, "label_name": "stripe"},
        {"id": "b", "guide_bytes": _png(3), "workflow": "guide", "guidance_scale": 3.0, "t0": 0.1},
    ])
    rows = decode_batch(table, settings).to_pylist()
    a = [r for r in rows if r["id"] == "a"]
    assert [r["t0"] for r in a] == [0.2, 0.4, 0.2] and {r["label"] for r in a} == {2}
    assert {r["guidance_scale"] for r in a} == {1.5} and all(r["status"] == "ok" for r in a)
    b = [r for r in rows if r["id"] == "b"]
    assert [r["t0"] for r in b] == [0.1] * 3 and {r["guidance_scale"] for r in b} == {3.0}  # its own t0 wins
    assert a[0]["built_guide"] == "inputs/a_guide.png" and (tmp_path / "inputs" / "a_guide.png").exists()


def test_editor_output_is_the_kernel_call_a_notebook_makes(cond_model: Path) -> None:
    sampling = SamplingSpec(t0=0.4, sampler="ancestral", steps=4)
    editor = Editor(EditSettings(model=ModelSpec(uri=str(cond_model)), sampling=sampling,
                                 working=WorkingSize(1, SIZE, SIZE)))
    table = manifest_table([
        {"id": "a", "guide_bytes": _png(4), "workflow": "guide", "label": 0, "guidance_scale": 2.0},
        {"id": "b", "guide_bytes": _png(5), "workflow": "guide", "label": None, "guidance_scale": 1.0},
        {"id": "c", "guide_bytes": _png(6), "workflow": "guide", "label": 2, "guidance_scale": 1.0},
    ])
    work = decode_batch(table, decode_settings(samples=1, conditioning="class")).to_pylist()
    together = editor.edit_rows(work)
    model = load_score_model(str(cond_model))
    for row, result in zip(work, together, strict=True):
        assert row["generator_seed"] == seed_for(3, row["id"], 0)  # the job seed (3), the id, the sample
        expected = sdedit(model, _guide_tensor(row), t0=row["t0"], steps=4, sampler="ancestral", labels=[row["label"]],
                          guidance_scale=row["guidance_scale"], generator=[generator_for(3, row["id"], 0)])
        out = expected.mul(255).round().to(torch.uint8)[0, 0].numpy()
        assert np.frombuffer(result["output"], np.uint8).reshape(SIZE, SIZE).tolist() == out.tolist(), row["id"]
        alone = editor.edit_rows([row])[0]
        assert alone["output"] == result["output"]  # never depends on the batch mates' labels or guidance


def _guide_tensor(row: dict[str, Any]) -> torch.Tensor:
    pixels = np.frombuffer(row["pixels"], np.uint8).reshape(1, 1, SIZE, SIZE)
    return torch.from_numpy(pixels.copy()).float().div(255.0)


def _job(tmp_path: Path, model: Path, manifest: Path, **sampling: Any) -> dict[str, Any]:
    return {
        "input": {"manifest": str(manifest)}, "output": {"uri": str(tmp_path / "out"), "embed_images": True},
        "model": {"uri": str(model)},
        "sampling": {"t0": 0.1, "sampler": "ancestral", "steps": 3, "samples": 2, "seed": 1, **sampling},
        "resources": {"actors": 1, "batch_size": 4, "num_cpus": 0.5},
    }


def _parquet_manifest(path: Path, labels: list[Any]) -> Path:
    cells = [{"bytes": _png(10 + i), "path": f"{i}.png"} for i in range(len(labels))]
    pq.write_table(pa.table({
        "id": [f"item-{i}" for i in range(len(labels))],
        "image": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "label": pa.array([str(v) if v is not None else None for v in labels], pa.string()),
    }), path)
    return path


def test_preflight_refuses_labels_the_model_cannot_take(tmp_path: Path, tiny_model: Path,
                                                       cond_model_no_null: Path) -> None:
    manifest = _parquet_manifest(tmp_path / "m.parquet", [0, "square"])
    with pytest.raises(SpecError, match="input.manifest: .*has a label column, but .* is not class-conditional"):
        preflight(build_spec(_job(tmp_path, tiny_model, manifest)))
    with pytest.raises(SpecError, match="sampling.guidance_scale: 2.0 needs a class-conditional model"):
        preflight(build_spec(_job(tmp_path, tiny_model, tmp_path / "none.csv", guidance_scale=2.0)))
    with pytest.raises(SpecError, match="sampling.guidance_scale: 2.0 needs the unconditional model"):
        preflight(build_spec(_job(tmp_path, cond_model_no_null, manifest, guidance_scale=2.0)))
    unlabelled = tmp_path / "u.csv"
    unlabelled.write_text("id,guide\na,a.png\n")
    with pytest.raises(SpecError, match="has no label column, and .* has no null label"):
        preflight(build_spec(_job(tmp_path, cond_model_no_null, unlabelled)))


@pytest.mark.slow
def test_augmentation_job_end_to_end(tmp_path: Path, cond_model: Path, ray_session: None) -> None:
    manifest = _parquet_manifest(tmp_path / "m.parquet", [0, "square", "stripe", None, "hexagon"])
    spec = build_spec(_job(tmp_path, cond_model, manifest, t0=[0.1, 0.2], t0_mode="cycle", guidance_scale=2.0,
                           samples=3))
    summary = run_job(spec, sheet=True)
    assert summary.exit_code == 3 and summary.failures_by_reason == {"bad label": 1}
    index = pq.ParquetDataset(str(tmp_path / "out" / "index")).read().to_pandas()
    ok = index[index.status == "ok"].sort_values(["id", "sample"])
    assert len(ok) == 12 and set(ok.label.dropna().astype(int)) == {0, 1, 2}
    assert ok[ok.id == "item-3"].label.isna().all()  # unlabelled: the null label, the unconditional model
    assert list(ok[ok.id == "item-1"].t0) == [0.1, 0.2, 0.1] and (ok.guidance_scale == 2.0).all()
    assert list(ok[ok.id == "item-1"].label_name) == ["square"] * 3
    assert len(list((tmp_path / "out" / "images").glob("*/item-1_s2.png"))) == 1  # variants are samples: no t0 in names
    assert (tmp_path / "out" / "sheet.png").exists()
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "index" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features["label"].names == NAMES and ds.features["image"].__class__.__name__ == "Image"
    first = next(r for r in ds if r["status"] == "ok")
    assert first["image"].size == (SIZE, SIZE)
