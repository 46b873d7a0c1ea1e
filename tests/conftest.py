"""Shared by every folder of tests: the tiny score model (one recipe), its image size, and the local Ray.

The tiny model is a seeded diffusers UNet2DModel of two levels (8 and 16 channels): the same call gives
the same weights in every folder, and a job on it takes seconds on a CPU. ``SIZE`` is its side in
pixels (the quality tests ask for 28, Fashion-MNIST's side).

Ray starts once per session (it takes seconds) through the ``ray_session`` fixture, always with
``address="local"``: an instance of our own even when another Ray cluster runs on this machine.
tests/cluster stops it for its simulated cluster and starts it again with ``init_local_ray``.

Fast lane: ``pytest -m "not slow"`` leaves out the tests marked ``slow``, those that run a whole Ray
job or kill processes; CI runs everything (``pytest``).

Every conftest.py here is imported as the module ``conftest`` (the folders are no packages), each one
replacing the last in ``sys.modules``; so this one also goes by a name that stays, ``sdedit_testing``,
and conftests and test modules import from there: ``from sdedit_testing import SIZE, tiny_unet``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.modules["sdedit_testing"] = sys.modules[__name__]

SIZE = 16  # the tiny model's sample size: guides are fitted to SIZE x SIZE


def tiny_unet(channels: int = 1, size: int = SIZE, seed: int = 0, **overrides: Any) -> Any:
    """The tiny UNet2DModel (eval mode); ``overrides`` change its config (e.g. ``num_class_embeds``)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=4,
    )
    cfg.update(overrides)
    return UNet2DModel(**cfg).eval()


def save_tiny_model(folder: Path, channels: int = 1, size: int = SIZE, **scheduler: Any) -> Path:
    """``tiny_unet`` written as users bring a model: a diffusers folder (safetensors weights) with a
    DDPMScheduler config, ``clip_sample=False`` unless ``scheduler`` says otherwise."""
    from diffusers import DDPMScheduler

    tiny_unet(channels, size).save_pretrained(folder, safe_serialization=True)
    DDPMScheduler(**{"clip_sample": False, **scheduler}).save_config(folder)
    return Path(folder)


def decode_settings(*, channels: int = 1, height: int = SIZE, width: int = SIZE, fit: str = "resize",
                    t0: float = 0.1, seed: int = 3, samples: int = 2, out_uri: str | None = None,
                    conditioning: str | None = None, **input_fields: Any) -> Any:
    """The decode stage's settings for a job of these few fields (``input_fields``: input.* fields)."""
    from pipeline.decode import DecodeSettings
    from pipeline.images import WorkingSize
    from pipeline.naming import OutputLayout
    from pipeline.spec import InputSpec, SamplingSpec

    sampling = SamplingSpec(t0=t0, seed=seed, samples=samples)
    return DecodeSettings(
        working=WorkingSize(channels, height, width, fit), input=InputSpec(manifest="-", **input_fields),
        sampling=sampling, layout=OutputLayout(sweep=sampling.sweep), out_uri=out_uri,
        conditioning=conditioning,
    )


def manifest_table(rows: list[dict[str, Any]]) -> Any:
    """Normalised manifest rows (pipeline.rows MANIFEST_SCHEMA), every column not given null."""
    import pyarrow as pa

    from pipeline.rows import MANIFEST_SCHEMA

    return pa.Table.from_pylist([{name: r.get(name) for name in MANIFEST_SCHEMA.names} for r in rows],
                                schema=MANIFEST_SCHEMA)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a diffusers folder, one channel (tests/kernel overrides the name: a ScoreModel)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def quiet_ray_data() -> None:
    """No progress bars or start banners from Ray Data in the test output."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def init_local_ray() -> None:
    """Start the shared instance: a new local one (``address="local"``), 2 CPUs, a small object store."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2,
             logging_level="warning", configure_logging=False)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    if not ray.is_initialized():
        init_local_ray()
    quiet_ray_data()
    yield
    ray.shutdown()


def pytest_configure(config: pytest.Config) -> None:
    # Ray Data warns about its own deprecated DataContext fields whenever a context is copied.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray.data.context")
