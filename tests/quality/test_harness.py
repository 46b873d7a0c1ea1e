"""`sdedit eval` end to end on a tiny random UNet2DModel, and the studies' default-picking rule."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pipeline.quality.dataset import DEFAULT_ROOT
from pipeline.quality.harness import main, steps_for_calls

pytestmark = pytest.mark.skipif(not DEFAULT_ROOT.exists(), reason="Fashion-MNIST not installed")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_end_to_end_quick(tiny_unet_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "eval"
    rc = main(["--model", str(tiny_unet_dir), "--quick", "--n", "6", "--kid-ref", "12",
               "--sampler", "ancestral", "ddim", "pc", "--steps", "2", "--t0", "0.4", "--uncond-steps", "2",
               "--batch-size", "4",
               "--out", str(out), "--name", "t"])
    assert rc == 0
    rows = _read_csv(out / "t.csv")
    names = [r["name"] for r in rows]
    assert names[:3] == ["reference: stroke guides", "reference: real test images",
                         "reference: unconditional samples"]
    assert [r["sampler"] for r in rows[3:]] == ["ancestral", "ddim", "pc"]
    for r in rows:
        assert float(r["kid_se"]) > 0 and int(r["n"]) == 6 and not r["error"]
    guides, real = rows[0], rows[1]
    assert float(guides["l2"]) == 0.0 and float(real["l2"]) > 0
    for r in rows[2:]:
        # the kernel's call count is what the network actually saw (pc: two calls a step)
        assert float(r["calls_counted"]) == float(r["calls"])
        assert 0 < float(r["rms"]) < 1 and float(r["l2"]) == pytest.approx(28 * float(r["rms"]), rel=0.2)
    assert rows[5]["calls"] == "4"
    assert "| sdedit ddim | 0.4 | 2 | 2 |" in (out / "t.md").read_text()
    record = json.loads((out / "t.json").read_text())
    assert record["settings"]["n"] == 6 and record["settings"]["model_digest"]


def test_eval_reports_a_failing_configuration_and_goes_on(tiny_unet_dir, tmp_path):
    rc = main(["--model", str(tiny_unet_dir), "--n", "4", "--kid-ref", "8", "--no-references",
               "--sampler", "nonesuch", "ancestral", "--steps", "1", "--t0", "0.2", "--out", str(tmp_path)])
    assert rc == 1
    rows = _read_csv(tmp_path / "eval.csv")
    assert "nonesuch" in rows[0]["error"] and not rows[1]["error"]


def test_steps_for_calls():
    assert steps_for_calls("ancestral", 25) == 25
    assert steps_for_calls("pc", 25) == 12
    assert steps_for_calls("pc", 1) == 1


def _studies():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "quality_studies.py"
    spec = importlib.util.spec_from_file_location("quality_studies", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_is_the_fewest_calls_from_which_on_all_are_within():
    qs = _studies()
    ref = {"kid": 0.010, "kid_se": 0.002, "l2": 5.0, "l2_se": 0.1}

    def row(sampler, budget, kid, l2):
        r = {"sampler": sampler, "budget": budget, "calls": budget, "steps": budget, "kid": kid, "l2": l2}
        return {**r, **qs.compare(r, ref)}

    table = {  # sampler: [(kid, l2) at 5, 10, 25, 50 calls]
        "a": [(0.011, 5.0), (0.020, 5.0), (0.011, 5.05), (0.009, 4.0)],
        "b": [(0.030, 5.0), (0.012, 5.09), (0.010, 5.0), (0.010, 5.0)],
        "c": [(0.030, 9.0), (0.030, 9.0), (0.030, 9.0), (0.010, 5.3)],
    }
    budgets = (5, 10, 25, 50)
    rows = [row(s, b, k, l2) for s, vals in table.items() for b, (k, l2) in zip(budgets, vals, strict=True)]
    choice = qs.choose_defaults(rows, ["a", "b", "c"], budgets)
    assert choice["a"]["budget"] == 25  # 5 passes but 10 does not: not "from then on"
    assert choice["b"]["budget"] == 10
    assert choice["c"] is None  # L2 worse by 3 standard errors even at 50
    assert choice["_best"]["sampler"] == "b"
