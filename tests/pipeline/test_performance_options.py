"""Performance options through the job: autocast, channels_last, compile and batch_size auto.

The options change how the network runs, never which items come out or how they are recorded;
CPU runs here check the wiring (spec -> actor -> kernel), the kernel tests check the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.jobfile import SpecError, build_spec
from pipeline.run import run_job

MINIMAL = {"input": {"manifest": "m.csv"}, "output": {"uri": "out"}, "model": {"uri": "fashion-mnist-ddpm"}}


def _problems(**sections: dict[str, Any]) -> list[tuple[str, str]]:
    data = {k: {**v, **sections.get(k, {})} for k, v in MINIMAL.items()}
    data.update({k: v for k, v in sections.items() if k not in MINIMAL})
    with pytest.raises(SpecError) as info:
        build_spec(data)
    return info.value.problems


def test_option_defaults_are_plain_fp32_eager() -> None:
    spec = build_spec(MINIMAL)
    assert (spec.model.autocast, spec.model.channels_last, spec.model.compile) == ("none", False, "off")
    assert spec.resources.batch_size == 8 and spec.resources.max_crashes_per_item == 2


@pytest.mark.parametrize(("sections", "field", "words"), [
    ({"model": {"autocast": "float8"}}, "model.autocast", "bfloat16"),
    ({"model": {"autocast": "bfloat16", "dtype": "float16"}}, "model.autocast", "float32"),
    ({"model": {"compile": "fast"}}, "model.compile", "reduce-overhead"),
    ({"resources": {"batch_size": 0}}, "resources.batch_size", "auto"),
    ({"resources": {"batch_size": "max"}}, "resources.batch_size", "auto"),
    ({"resources": {"max_crashes_per_item": 0}}, "resources.max_crashes_per_item", "1"),
])
def test_bad_options_name_their_field(sections: dict[str, Any], field: str, words: str) -> None:
    problems = _problems(**sections)
    assert any(f.startswith(field) and words in message for f, message in problems), problems


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_job_with_autocast_channels_last_and_auto_batch(
        tmp_path: Path, tiny_model: Path, data_dir: Path, job_data: Any) -> None:
    manifest = data_dir / "perf.csv"
    manifest.write_text("id,guide\n" + "".join(f"p-{i},img/g{i % 2}.png\n" for i in range(6)))
    plain_out, fast_out = tmp_path / "plain", tmp_path / "fast"
    plain = run_job(build_spec(job_data(tiny_model, manifest, plain_out, output={"sheet_items": 0})))
    data = job_data(tiny_model, manifest, fast_out, output={"sheet_items": 0}, resources={"batch_size": "auto"})
    data["model"].update(autocast="bfloat16", channels_last=True)
    fast = run_job(build_spec(data))
    assert plain.exit_code == fast.exit_code == 0 and plain.outputs == fast.outputs == 12
    record = json.loads((fast_out / "job.json").read_text())
    chosen = record["model"]["batch_size"]
    assert isinstance(chosen, int) and 1 <= chosen <= 256  # measured, recorded
    assert record["spec"]["resources"]["batch_size"] == "auto"
    a, b = pd.read_parquet(plain_out / "index"), pd.read_parquet(fast_out / "index")
    assert sorted(zip(a.id, a["sample"], a.generator_seed)) == sorted(zip(b.id, b["sample"], b.generator_seed))
    for name in a.image:  # bf16 network: close to the fp32 outputs, not equal
        x = np.asarray(Image.open(plain_out / name), np.float64)
        y = np.asarray(Image.open(fast_out / name), np.float64)
        assert np.abs(x - y).mean() < 8.0
