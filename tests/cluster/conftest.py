"""A Ray cluster of several nodes simulated on this machine (``ray.cluster_utils.Cluster``).

It needs its own Ray instance, so the module fixture shuts down whatever Ray this pytest process
had (tests/pipeline's shared instance), and restarts that one afterwards when it had been running,
so the suite works in any order. Nodes: a head and two workers of 2 CPUs each; the tests give each
model actor 1.5 CPUs, so two actors never share a node (the pool spreads over the nodes) and the
third node is the spare on which a lost actor restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = 16
NODE_CPUS, WORKERS = 2, 2


def _shared_ray_init() -> None:
    """The shared instance tests/pipeline/conftest.py starts (same settings), for tests after ours."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2,
             logging_level="warning", configure_logging=False)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    had_ray = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "include_dashboard": False, "object_store_memory": 150 * 1024**2,
        # Notice a removed node in seconds, not the default half minute (as Ray's own node-loss tests do).
        # A killed raylet refuses connections at once, so 5 failed checks 1 s apart; a busy but live
        # one still gets the default 10 s per check.
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5},
    })
    try:
        for _ in range(WORKERS):
            cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=100 * 1024**2, wait=False)
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, logging_level="warning", configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # Start dispatching only once every actor of the pool is up: otherwise, on a slow machine, the
        # first actor to load its model can take all the batches of a small job before the others start.
        wait_before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120
        yield cluster
        ctx.wait_for_min_actors_s = wait_before
    finally:
        ray.shutdown()
        try:
            cluster.shutdown()
        finally:
            if had_ray:
                _shared_ray_init()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers UNet2DModel (16x16, one channel) with a DDPM scheduler: seconds on a CPU."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    ).save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(clip_sample=False).save_config(folder)
    return folder


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray.data.context")
