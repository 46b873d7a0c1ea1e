"""``sdedit tune-t0``: the bisection itself on known functions, the job-file copy, and one real run on
the bundled model whose chosen t0 gives the target L2 within tolerance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.jobfile import load_spec
from pipeline.tune import Probe, TargetOutOfReach, bisect_t0, write_tuned_job

REPO = Path(__file__).resolve().parents[2]


def _linear(slope: float = 0.4, calls: list[float] | None = None) -> Any:
    def measure(t0: float) -> Probe:
        if calls is not None:
            calls.append(t0)
        return Probe(t0, slope * t0, 8)

    return measure


def test_bisection_finds_the_target_on_a_monotone_function() -> None:
    calls: list[float] = []
    result = bisect_t0(_linear(calls=calls), 0.2, lo=0.05, hi=1.0, tolerance=0.002, max_iters=10)
    assert result.converged and abs(result.l2 - 0.2) <= 0.002 and abs(result.t0 - 0.5) <= 0.005
    assert calls[:2] == [0.05, 1.0] and len(calls) == len(result.probes) <= 12
    assert result.probes[-1].t0 == result.t0  # the t0 chosen is the t0 measured (rounded midpoints)


def test_bisection_reports_an_unreachable_target_with_the_range() -> None:
    with pytest.raises(TargetOutOfReach, match=r"above the L2 at t0=1.0: reachable .* 0.0200 \(t0=0.05\) to 0.4000"):
        bisect_t0(_linear(), 0.6, lo=0.05, hi=1.0)
    with pytest.raises(TargetOutOfReach, match="below the L2 at t0=0.05"):
        bisect_t0(_linear(), 0.001, lo=0.05, hi=1.0, tolerance=0.005)


def test_bisection_returns_the_closest_probe_when_out_of_iterations() -> None:
    result = bisect_t0(_linear(), 0.123, lo=0.05, hi=1.0, tolerance=1e-6, max_iters=2)
    assert not result.converged and len(result.probes) == 4
    assert result.t0 == min(result.probes, key=lambda p: abs(p.l2 - 0.123)).t0
    ends = bisect_t0(_linear(), 0.401, lo=0.05, hi=1.0, tolerance=0.01)
    assert ends.converged and ends.t0 == 1.0 and len(ends.probes) == 2  # an end within tolerance


def test_tuned_copy_keeps_comments_and_sets_only_t0(tmp_path: Path) -> None:
    out = tmp_path / "tuned.yaml"
    assert write_tuned_job(REPO / "jobs" / "sweep.yaml", out, 0.4375, "tuned")  # a sweep list becomes one t0
    before = yaml.safe_load((REPO / "jobs" / "sweep.yaml").read_text())
    after = yaml.safe_load(out.read_text())
    assert after["sampling"]["t0"] == 0.4375 and {**before, "sampling": {**before["sampling"], "t0": 0.4375}} == after
    assert out.read_text().count("#") >= (REPO / "jobs" / "sweep.yaml").read_text().count("#")
    assert load_spec(out).sampling.t0 == 0.4375
    flow = tmp_path / "flow.yaml"
    flow.write_text("# mine\n{input: {manifest: m.csv}, output: {uri: o}, model: {uri: x}, sampling: {t0: 0.5}}\n")
    assert not write_tuned_job(flow, out, 0.3, "tuned")  # no targeted edit possible: rewritten, comments lost
    assert yaml.safe_load(out.read_text())["sampling"] == {"t0": 0.3}
    bare = tmp_path / "bare.yaml"
    bare.write_text("input:\n  manifest: m.csv  # keep me\nsampling:\n    steps: 5\noutput:\n  uri: o\n")
    assert write_tuned_job(bare, out, 0.25, "tuned") and "# keep me" in out.read_text()
    assert yaml.safe_load(out.read_text())["sampling"] == {"t0": 0.25, "steps": 5}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_tune_on_the_bundled_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The paper's practice end to end: the chosen t0, rerun on the same sample, gives the target L2."""
    from pipeline.run import preflight
    from pipeline.tune import L2Probe, sample_guides

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "input": {"manifest": str(REPO / "pipeline/assets/samples/manifest.csv")},
        "output": {"uri": str(tmp_path / "out")}, "model": {"uri": "fashion-mnist-ddpm"},
        "sampling": {"t0": 0.5, "steps": 6},
    }))
    tuned = tmp_path / "tuned.yaml"
    args = ["tune-t0", str(job), "--target-l2", "0.15", "--tolerance", "0.015", "--sample", "4", "--out", str(tuned)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 item(s) drawn" in printed and printed.count("probe t0=") >= 2 and "chosen t0 = " in printed
    spec = load_spec(tuned)
    assert not spec.sampling.sweep
    work = sample_guides(spec, preflight(spec), 4, 0)
    check = L2Probe(spec, preflight(spec), work)(spec.sampling.t0)
    assert check.n == 4 and abs(check.l2 - 0.15) <= 0.015  # reproducible: same items, same seeds

    assert main(["tune-t0", str(job), "--target-l2", "0.9", "--sample", "2", "--out", str(tuned)]) == 2
    assert "reachable on this sample is" in capsys.readouterr().err
    assert main(["tune-t0", str(job), "--target-l2", "0.2", "--lo", "0.6", "--hi", "0.5"]) == 2
