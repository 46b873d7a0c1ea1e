"""Execution options: reduced-precision autocast, channels-last memory and torch.compile for a ScoreModel.

They change how the network runs, never what SDEdit computes: the SDE's schedule, the sampler's
updates and the noise stay float32 (autocast covers the network call alone, and its output is cast
back to float32 before any schedule maths). Each option is measured in benchmarks/; none is on by
default, because each pays only on some hardware (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SDEditError
from .model import ScoreModel

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class ExecutionOptions:
    """autocast: None, "bfloat16" or "float16"; compile: None or a torch.compile mode.

    cudnn_benchmark: let cuDNN time its convolution algorithms on the first call of each shape and keep
    the fastest (a process-wide switch: a model actor owns its process). Pays when the same shapes
    repeat, as they do for the 10 to 500 calls of every batch.
    """

    autocast: str | None = None
    channels_last: bool = False
    compile: str | None = None
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise SDEditError(f"autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, got {self.autocast!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise SDEditError(f"compile must be None or one of {COMPILE_MODES}, got {self.compile!r}")


def accelerate(model: ScoreModel, options: ExecutionOptions) -> ScoreModel:
    """Apply ``options`` to ``model`` in place and return it.

    autocast needs float32 weights (half weights already run in half precision). CUDA graphs
    ("reduce-overhead", "max-autotune") exist on CUDA only; on other devices those modes compile
    without them, as torch itself does.
    """
    if options.autocast is not None:
        if model.dtype != torch.float32:
            raise SDEditError(f"autocast needs float32 weights; this model's weights are {model.dtype}")
        model.autocast = AUTOCAST_DTYPES[options.autocast]
    if options.channels_last:
        model.use_channels_last()
    if options.cudnn_benchmark and model.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if options.compile is not None:
        model.net = torch.compile(model.net, mode=options.compile)
        model.cudagraphs = model.device.type == "cuda" and options.compile in ("reduce-overhead", "max-autotune")
    return model


def choose_batch_size(model: ScoreModel, *, limit: int = 256, memory_fraction: float = 0.8,
                      time_budget_s: float = 2.0, guided: bool = False) -> int:
    """The batch size to run ``model`` at: from free memory on CUDA, from measured speed elsewhere.

    CUDA: the network's peak memory is measured at two batch sizes (it grows linearly); the
    sampler's own tensors (about :data:`STATE_COPIES` images per item, float32) are added, and the
    largest batch that fits in ``memory_fraction`` of the free memory is taken, rounded down to a
    multiple of 8. Other devices have no memory to run out of at these sizes: batches double while
    images/s still rise by 10 % and one call stays under ``time_budget_s``. guided: size for
    classifier-free guidance, whose network calls take twice the batch. A latent model is measured on
    its latent state (``model.sample_size`` stays in pixels); its VAE runs in slices
    (LatentScoreModel.vae_batch) after the loop, so the network's batch is what this sizes.
    """
    if limit < 1:
        raise SDEditError(f"limit must be >= 1, got {limit}")
    shape = _item_shape(model)
    if guided and not model.can_guide:
        raise SDEditError("guided=True needs a text-conditional model or a class-conditional one with a null label")
    if model.device.type == "cuda":
        return _batch_from_memory(model, shape, limit, memory_fraction, guided)
    return _batch_from_speed(model, shape, limit, time_budget_s, guided)


STATE_COPIES = 12  # x, x0, eps, noise, guide, mask, the multistep history and temporaries
PIXEL_COPIES = 4  # a latent model also holds the pixel guide, mask, decoded image and output


def _item_shape(model: ScoreModel) -> tuple[int, int, int]:
    """One item's state (latents for a latent model) at the model's sample_size in pixels."""
    size = model.sample_size
    if model.channels is None or size is None:
        raise SDEditError("choose_batch_size needs the model's channels and sample_size")
    h, w = (size, size) if isinstance(size, int) else size
    return model.state_shape(int(h), int(w))


@torch.inference_mode()
def _call(model: ScoreModel, shape: tuple[int, int, int], batch: int, guided: bool) -> None:
    x = torch.randn(batch, *shape, device=model.device)
    labels = [0] * batch if model.classes is not None else None  # any label (or prompt) costs the same
    model.bind(batch, labels=labels, guidance_scale=2.0 if guided else 1.0).predict(x, 0.5)


def _batch_from_memory(model: ScoreModel, shape: tuple[int, int, int], limit: int, fraction: float,
                       guided: bool) -> int:
    device = model.device

    def peak(batch: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _call(model, shape, batch, guided)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    small, large = peak(1), peak(4)
    per_item = max(1.0, (large - small) / 3) + STATE_COPIES * 4 * shape[0] * shape[1] * shape[2]
    size = model.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    if shape != (model.channels, h, w):  # latent state: the pixels are extra
        per_item += PIXEL_COPIES * 4 * model.channels * h * w
    fixed = max(0.0, small - per_item)
    free, _ = torch.cuda.mem_get_info(device)
    fits = int((free * fraction - fixed) // per_item)
    if fits < 1:
        raise SDEditError(f"not even one item fits in {fraction:.0%} of the {free / 2**30:.1f} GiB free")
    chosen = min(limit, fits)
    return chosen - chosen % 8 if chosen >= 8 else chosen


def _batch_from_speed(model: ScoreModel, shape: tuple[int, int, int], limit: int, budget_s: float,
                      guided: bool) -> int:
    import time

    _call(model, shape, 1, guided)  # warm-up: first calls pay for allocations and kernel selection
    best, best_rate, batch = 1, 0.0, 1
    while batch <= limit:
        start = time.perf_counter()
        _call(model, shape, batch, guided)
        elapsed = time.perf_counter() - start
        rate = batch / max(elapsed, 1e-9)
        if rate < best_rate * 1.1:
            break
        best, best_rate = batch, rate
        if elapsed > budget_s:
            break
        batch *= 2
    return best
