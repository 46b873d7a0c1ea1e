"""Execution options (autocast, channels_last, torch.compile, batch size): same SDEdit, other speed.

Each option is checked on the CPU against plain fp32 eager on the same inputs and draws; the CUDA
paths (CUDA graphs, fp16 on the GPU, the memory-based batch size) run where a GPU exists (marker gpu).
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_unet

from sdedit_kernel import VPSDE, ExecutionOptions, ScoreModel, SDEditError, accelerate, choose_batch_size, sdedit

GUIDES = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(7))


def _model(device: str = "cpu", **options) -> ScoreModel:
    model = ScoreModel(tiny_unet().to(device), VPSDE.linear())
    return accelerate(model, ExecutionOptions(**options))


def _edit(model: ScoreModel, guides: torch.Tensor = GUIDES) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(i) for i in range(guides.shape[0])]
    return sdedit(model, guides.to(model.device), t0=0.5, steps=6, sampler="dpmpp_2m_sde", generator=gens).cpu()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


REFERENCE = None


def _reference() -> torch.Tensor:
    global REFERENCE
    if REFERENCE is None:
        REFERENCE = _edit(_model())
    return REFERENCE


@pytest.mark.parametrize(("autocast", "tolerance"), [("bfloat16", 2e-2), ("float16", 5e-3)])
def test_autocast_runs_the_network_in_half_and_the_schedule_in_fp32(autocast: str, tolerance: float) -> None:
    model = _model(autocast=autocast)
    seen: list[tuple[torch.dtype, bool, torch.dtype]] = []
    net = model.net

    def spy(x: torch.Tensor, t: torch.Tensor):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return net(x, t)

    model.net = spy
    x0, eps = model.predict(torch.randn(2, 1, 16, 16), 0.4)
    assert x0.dtype == eps.dtype == torch.float32  # what the sampler sees is float32
    assert seen == [(torch.float32, True, getattr(torch, autocast))]  # only the net call is autocast
    assert not torch.is_autocast_enabled("cpu")  # and nothing after it
    model.net = net
    out = _edit(model)
    assert out.dtype == torch.float32
    assert 0 < _rel(out, _reference()) < tolerance  # reduced precision, not another algorithm


def test_autocast_refuses_half_weights() -> None:
    model = ScoreModel(tiny_unet().to(torch.bfloat16), VPSDE.linear())
    with pytest.raises(SDEditError, match="float32 weights"):
        accelerate(model, ExecutionOptions(autocast="bfloat16"))


def test_channels_last_changes_layout_not_results() -> None:
    model = _model(channels_last=True)
    conv = next(m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert _rel(_edit(model), _reference()) < 1e-5


def test_unknown_options_are_refused() -> None:
    with pytest.raises(SDEditError, match="autocast"):
        ExecutionOptions(autocast="float8")
    with pytest.raises(SDEditError, match="compile"):
        ExecutionOptions(compile="fastest")


class SmallNet(torch.nn.Module):
    """Two convolutions and a time scale: compiles in seconds (a UNet takes minutes on 2 CPU cores)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + t.float().view(-1, 1, 1, 1) / 1000.0
        return self.b(torch.nn.functional.silu(self.a(x) * scale))


def test_torch_compile_matches_eager_on_cpu() -> None:
    """Inductor on the CPU (C++ code generation): the compiled network gives the eager results."""
    torch._dynamo.reset()
    eager = ScoreModel(SmallNet(), VPSDE.linear())
    compiled = accelerate(ScoreModel(SmallNet(), VPSDE.linear()), ExecutionOptions(compile="default"))
    assert not compiled.cudagraphs  # CUDA graphs exist on CUDA only
    assert _rel(_edit(compiled), _edit(eager)) < 1e-4
    half = _edit(compiled, GUIDES[:2])  # another batch size: recompiled (or dynamic), still right
    assert _rel(half, _edit(eager, GUIDES[:2])) < 1e-4


def test_batch_size_from_speed_on_cpu() -> None:
    model = _model()
    model.sample_size = 16
    chosen = choose_batch_size(model, limit=16, time_budget_s=0.5)
    assert 1 <= chosen <= 16 and chosen & (chosen - 1) == 0  # a power of two within the limit
    assert choose_batch_size(model, limit=1) == 1
    with pytest.raises(SDEditError, match="limit"):
        choose_batch_size(model, limit=0)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("options", [
    {}, {"autocast": "bfloat16"}, {"autocast": "float16", "channels_last": True},
    {"autocast": "bfloat16", "channels_last": True, "compile": "reduce-overhead"},
])
def test_cuda_paths_match_cpu_fp32(options: dict) -> None:
    torch._dynamo.reset()
    model = _model("cuda", **options)
    assert model.cudagraphs == (options.get("compile") == "reduce-overhead")
    first = _edit(model)
    again = _edit(model)  # a second run replays graphs: outputs must not alias the graph's memory
    tolerance = 2e-2 if options.get("autocast") else 5e-3  # fp32 convolutions run as TF32 on CUDA
    assert _rel(first, _reference()) < tolerance and torch.equal(first, again)


@pytest.mark.gpu
@needs_cuda
def test_batch_size_from_memory_on_cuda() -> None:
    model = _model("cuda")
    model.sample_size = 16
    assert choose_batch_size(model, limit=64) == 64  # a tiny model: the limit decides
    big = ScoreModel(tiny_unet(size=512).cuda(), VPSDE.linear())
    chosen = choose_batch_size(big, limit=10**6, memory_fraction=0.05)
    free, _ = torch.cuda.mem_get_info()
    assert 8 <= chosen < 10**6 and chosen % 8 == 0
    x = torch.randn(chosen, 1, 512, 512, device="cuda")
    big.predict(x, 0.5)  # the chosen batch runs
    assert torch.cuda.max_memory_allocated() < free
