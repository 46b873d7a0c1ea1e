"""The job spec: defaults, --set overrides, and errors that name the dotted field (no Ray here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.jobfile import SpecError, apply_overrides, build_spec, load_spec
from pipeline.reference import iter_fields
from pipeline.spec import DEFAULT_SAMPLER, JobSpec

MINIMAL = {"input": {"manifest": "m.csv"}, "output": {"uri": "out"}, "model": {"uri": "fashion-mnist-ddpm"}}


def _fields(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        build_spec(data)
    return [field for field, _ in info.value.problems]


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    data = {k: dict(v) for k, v in MINIMAL.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def test_defaults_are_documented_and_sane() -> None:
    spec = build_spec(MINIMAL)
    assert spec.sampling.sampler == DEFAULT_SAMPLER == "dpmpp_2m_sde"
    assert spec.sampling.t0 == 0.5 and spec.sampling.passes == 1 and spec.sampling.samples == 1
    assert spec.resources.actors.min == spec.resources.actors.max == 1
    assert spec.output.format == "png" and spec.input.fit == "resize" and spec.device == "cpu"
    fields = {name: (default, doc) for name, _, default, doc in iter_fields()}
    for name in ("input.manifest", "output.uri", "storage_options", "model.uri", "sampling.t0",
                 "sampling.sampler", "sampling.steps", "sampling.passes", "sampling.samples",
                 "sampling.seed", "resources.actors", "resources.batch_size", "resources.num_gpus",
                 "output.embed_images", "input.storage_options", "output.storage_options",
                 "model.storage_options", "input.image_size", "input.fit", "sampling.options",
                 "sampling.guidance_scale", "sampling.t0_mode"):
        assert name in fields and fields[name][1], name


def test_spec_is_frozen() -> None:
    spec = build_spec(MINIMAL)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        spec.sampling.t0 = 0.3  # type: ignore[misc]


@pytest.mark.parametrize("sections, field", [
    ({"sampling": {"t0": 0}}, "sampling.t0"),
    ({"sampling": {"t0": 1.5}}, "sampling.t0"),
    ({"sampling": {"sampler": "nope"}}, "sampling.sampler"),
    ({"sampling": {"sampler": "ddim", "options": {"bogus": 1}}}, "sampling.options"),
    ({"sampling": {"steps": 0}}, "sampling.steps"),
    ({"sampling": {"samples": 0}}, "sampling.samples"),
    ({"sampling": {"samples_per_item": 0}}, "sampling.samples_per_item"),  # the former name still loads
    ({"sampling": {"seed": -1}}, "sampling.seed"),
    ({"sampling": {"tee0": 0.3}}, "sampling.tee0"),
    ({"resources": {"actors": 0}}, "resources.actors"),
    ({"resources": {"actors": {"min": 3, "max": 2}}}, "resources.actors"),
    ({"resources": {"batch_size": 0}}, "resources.batch_size"),
    ({"resources": {"num_gpus": -1}}, "resources.num_gpus"),
    ({"output": {"format": "gif"}}, "output.format"),
    ({"output": {"quality": 101}}, "output.quality"),
    ({"input": {"fit": "squash"}}, "input.fit"),
    ({"input": {"resize": "squash"}}, "input.resize"),
    ({"input": {"format": "xml"}}, "input.format"),
    ({"input": {"image_size": 0}}, "input.image_size"),
    ({"input": {"manifest": []}}, "input.manifest"),
    ({"model": {"uri": "no-such-bundled-model"}}, "model.uri"),
    ({"model": {"device": "tpu"}}, "model.device"),
    ({"model": {"device": "cuda"}}, "model.device"),
    ({"model": {"device": "cuda:1"}, "resources": {"num_gpus": 1}}, "model.device"),
    ({"model": {"dtype": "float8"}}, "model.dtype"),
])
def test_bad_values_name_their_field(sections: dict[str, Any], field: str) -> None:
    assert field in _fields(_with(**sections))


def test_missing_and_unknown_sections_are_named() -> None:
    assert _fields({"input": {"manifest": "m.csv"}, "model": {"uri": "x/y"}}) == ["output"]
    assert "outptu" in _fields({**MINIMAL, "outptu": {}})


def test_actors_as_int_or_range() -> None:
    assert build_spec(_with(resources={"actors": 3})).resources.actors.max == 3
    pool = build_spec(_with(resources={"actors": {"min": 1, "max": 4}})).resources.actors
    assert (pool.min, pool.max) == (1, 4)


def test_storage_options_merge_per_section() -> None:
    spec = build_spec(_with(storage_options={"anon": False, "endpoint_url": "http://a"},
                            output={"storage_options": {"endpoint_url": "http://b"}}))
    assert spec.options_for("output") == {"anon": False, "endpoint_url": "http://b"}
    assert spec.options_for("input") == {"anon": False, "endpoint_url": "http://a"}


def test_public_dict_redacts_secrets() -> None:
    spec = build_spec(_with(storage_options={"key": "AKIA", "secret": "s3cr3t", "anon": False},
                            model={"uri": "s3://user:pw@bucket/model",
                                   "storage_options": {"client_kwargs": {"aws_session_token": "SeSsIoN"}}}))
    text = str(spec.public_dict())
    for secret in ("AKIA", "s3cr3t", "SeSsIoN", "user:pw"):
        assert secret not in text
    assert spec.public_dict()["storage_options"]["anon"] is False


def test_overrides_are_yaml_parsed_and_nested() -> None:
    data = apply_overrides(MINIMAL, ["sampling.t0=0.4", "input.manifest=[a.csv, b.jsonl]",
                                     "resources.actors={min: 1, max: 2}", "sampling.steps=null"])
    spec = build_spec(data)
    assert spec.sampling.t0 == 0.4 and spec.input.manifests == ["a.csv", "b.jsonl"]
    assert spec.resources.actors.max == 2 and spec.sampling.steps is None
    assert MINIMAL["input"]["manifest"] == "m.csv"  # the original is untouched
    with pytest.raises(SpecError, match="dotted.name=value"):
        apply_overrides(MINIMAL, ["sampling.t0"])
    with pytest.raises(SpecError, match="sampling.t0"):
        apply_overrides(MINIMAL | {"sampling": {"t0": 0.3}}, ["sampling.t0.x=1"])


def test_load_spec_from_yaml(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(MINIMAL))
    assert isinstance(load_spec(job, ["sampling.seed=5"]), JobSpec)
    job.write_text("input: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(job)
    with pytest.raises(SpecError, match="cannot read job file"):
        load_spec(tmp_path / "missing.yaml")


def test_demo_job_is_a_valid_spec() -> None:
    spec = load_spec(Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml")
    assert spec.model.uri == "fashion-mnist-ddpm" and spec.output.uri == "out/demo"


def test_validate_command(tmp_path: Path, tiny_model: Path, data_dir: Path, capsys: pytest.CaptureFixture,
                          write_manifest: Any, manifest_rows: Any) -> None:
    manifest = write_manifest(data_dir, "validate.csv", manifest_rows(include_bad=False))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "input": {"manifest": str(manifest)}, "output": {"uri": str(tmp_path / "o")},
        "model": {"uri": str(tiny_model)}, "sampling": {"t0": 0.2},
    }))
    assert main(["validate", str(job)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["validate", str(job), "--set", "sampling.t0=7"]) == 2
    assert "sampling.t0" in capsys.readouterr().err
    assert main(["validate", str(job), "--set", "input.manifest=nope.csv"]) == 2
    assert "input.manifest: nope.csv does not exist" in capsys.readouterr().err
    assert main(["validate", str(job), "--set", f"model.uri={tmp_path}"]) == 2
    assert "model.uri" in capsys.readouterr().err
    no_guide = tmp_path / "m.csv"
    no_guide.write_text("id,picture\na,b.png\n")
    assert main(["validate", str(job), "--set", f"input.manifest={no_guide}"]) == 2
    assert "lacks column(s) guide" in capsys.readouterr().err
    (tmp_path / "o" / "images").mkdir(parents=True)
    (tmp_path / "o" / "images" / "old.png").write_bytes(b"x")
    assert main(["validate", str(job)]) == 2
    assert "already holds images/" in capsys.readouterr().err
    assert main(["validate", str(job), "--set", "output.if_exists=resume"]) == 0


def test_docs_field_table_is_current() -> None:
    """docs/pipeline.md carries `sdedit fields`' table verbatim: a new or changed field updates the docs."""
    from pipeline.reference import render_fields

    docs = (Path(__file__).resolve().parents[2] / "docs" / "pipeline.md").read_text()
    assert render_fields() in docs, "regenerate the table in docs/pipeline.md from `sdedit fields`"


def test_unknown_fields_say_did_you_mean_and_where_they_came_from(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**MINIMAL, "sampling": {"sampels": 2}}))
    with pytest.raises(SpecError) as caught:
        load_spec(job, ["input.fitt=pad", "sampling.seed=3"])
    problems = dict(caught.value.problems)
    assert problems["sampling.sampels"] == f"unknown field; did you mean sampling.samples? (in {job})"
    assert problems["input.fitt"] == "unknown field; did you mean input.fit? (from --set input.fitt=...)"


def test_a_job_that_cannot_run_fails_before_ray_starts(tmp_path: Path, tiny_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started for a job that cannot run")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"input": {"manifest": str(tmp_path / "missing.csv")},
                                   "output": {"uri": str(tmp_path / "out")}, "model": {"uri": str(tiny_model)}}))
    assert main(["run", str(job)]) == 2
    assert "input.manifest" in capsys.readouterr().err
