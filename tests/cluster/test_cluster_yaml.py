"""cluster.yaml is a valid Ray cluster launcher config: checked with the schema shipped inside ``ray``.

``prepare_config`` fills in the provider's defaults as ``ray up`` does; ``validate_config`` checks the
result against ``ray/autoscaler/ray-schema.json``. Nothing is launched and no cloud API is called.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("jsonschema")  # ray's validator needs it

REPO = Path(__file__).resolve().parents[2]


def _load() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validator() -> None:
    prepared = _validate(_load())
    assert prepared["provider"]["type"] == "aws"


def test_the_validator_is_not_a_no_op() -> None:
    import jsonschema

    config = _load()
    config["available_node_types"]["gpu_1x"]["min_worker"] = 0  # a typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="Additional properties are not allowed"):
        _validate(config)


def test_cpu_head_and_gpu_workers_that_install_the_project() -> None:
    config = _load()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers.values())
    assert all(0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in workers.values())
    mounted = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert mounted and any("pip install" in c and mounted[0] in c for c in config["setup_commands"])


def test_the_s3_job_fits_a_gpu_worker() -> None:
    """jobs/s3-example.yaml asks for what a gpu_1x node has, with CPUs left for decode and write tasks."""
    from pipeline.jobfile import load_spec
    from pipeline.run import IO_TASK_CPUS

    spec = load_spec(REPO / "jobs" / "s3-example.yaml")
    node = _load()["available_node_types"]["gpu_1x"]["resources"]
    actors_per_node = node["GPU"] // spec.resources.num_gpus
    assert actors_per_node >= 1 and spec.device == "cuda"
    assert actors_per_node * spec.resources.num_cpus + IO_TASK_CPUS <= node["CPU"]
