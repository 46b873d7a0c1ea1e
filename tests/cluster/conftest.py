"""A Ray cluster of several nodes simulated on this machine (``ray.cluster_utils.Cluster``).

It needs its own Ray instance, so the module fixture shuts down whatever Ray this pytest process
had (the shared instance of tests/conftest.py), and restarts that one afterwards when it had been
running, so the suite works in any order. Nodes: a head and two workers of 2 CPUs each; the tests
give each model actor 1.5 CPUs, so two actors never share a node (the pool spreads over the nodes)
and the third node is the spare on which a lost actor restarts. The model is tests/conftest.py's
``tiny_model``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sdedit_testing import init_local_ray, quiet_ray_data

NODE_CPUS, WORKERS = 2, 2


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
        quiet_ray_data()
        ctx = ray.data.DataContext.get_current()
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
                init_local_ray()  # the shared instance, for the tests after ours

