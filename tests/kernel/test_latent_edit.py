"""Latent SDEdit through the same `sdedit` call: masks (latent-grid rule, exact kept pixels), prompts
(dedupe, truncation notes, None = ""), batch independence, VAE slices, execution options, errors."""

from __future__ import annotations

import pytest
import torch
from latent_models import PIXELS, guides, save_sd_folder

from sdedit_kernel import (
    SAMPLERS,
    ExecutionOptions,
    LatentScoreModel,
    SDEditError,
    accelerate,
    choose_batch_size,
    generator_for,
    load_score_model,
    prompt_notes,
    sdedit,
)

pytestmark = pytest.mark.usefixtures("private_sdedit_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_sd_folder(tmp_path_factory.mktemp("sd") / "m", "sd1", seed=5)


@pytest.fixture(scope="module")
def model(folder) -> LatentScoreModel:
    return load_score_model(folder)


def gens(ids, seed: int = 9) -> list[torch.Generator]:
    return [generator_for(seed, f"item-{i}") for i in ids]


def edit(model, g, ids=None, **kw) -> torch.Tensor:
    ids = range(g.shape[0]) if ids is None else ids
    return sdedit(model, g, **{"t0": 0.5, "steps": 4, "sampler": "dpmpp_2m_sde", "generator": gens(ids), **kw})


def masks(batch: int) -> torch.Tensor:
    m = torch.zeros(batch, 1, PIXELS, PIXELS)
    m[0, :, 5:30, 13:50] = 1  # not on the 8-pixel grid
    if batch > 1:
        m[1, :, 40:, :] = 1
    if batch > 2:
        m[2:, :, 20:21, 33:34] = 1  # a single pixel
    return m


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_kept_pixels_are_the_guide_exactly(model, sampler):
    g, m = guides(3), masks(3)
    out = edit(model, g, sampler=sampler, edit_mask=m, prompts=["a cat", "a dog", None], guidance_scale=2.0,
               passes=2 if sampler == "ddim" else 1)
    keep = m.expand_as(g) == 0
    assert torch.equal(out[keep], g[keep]), sampler
    assert (out[~keep] - g[~keep]).abs().max() > 0.05, sampler


def test_latent_grid_rule_any_pixel_regenerates_the_cell(model):
    m = torch.zeros(2, 3, PIXELS, PIXELS)
    m[0, 1, 9, 17] = 1.0  # one pixel of one channel: cell (1, 2)
    m[1, :, 0:16, 0:8] = 0.25  # a soft region over cells (0, 0) and (1, 0)
    m[1, 0, 15, 7] = 0.75
    cells = model.mask_to_model_space(m)
    assert cells.shape == (2, 1, PIXELS // 8, PIXELS // 8)
    expected = torch.zeros_like(cells)
    expected[0, 0, 1, 2] = 1.0
    expected[1, 0, 0, 0] = 0.25
    expected[1, 0, 1, 0] = 0.75  # the largest value under the cell
    assert torch.equal(cells, expected)


def test_kept_latents_are_the_guide_latents_after_the_loop(model):
    g, m = guides(2), masks(2)
    seen: list[torch.Tensor] = []
    edit(model, g, edit_mask=m, callback=lambda p, x: seen.append(x))
    kept = model.mask_to_model_space(m).expand_as(seen[0]) == 0
    assert torch.equal(seen[0][kept], model.to_model_space(g)[kept])


def test_outputs_do_not_depend_on_batch_mates(model):
    g, m = guides(4, seed=2), masks(4)
    prompts = ["a cat", "a red house", None, "a photo of the tree"]
    negatives = ["dog", None, "blue", None]
    scales = torch.tensor([3.0, 1.0, 0.0, 7.5])
    kw = {"edit_mask": m, "prompts": prompts, "negative_prompts": negatives, "guidance_scale": scales}
    together = edit(model, g, **kw)
    for i in range(4):
        alone = edit(model, g[i : i + 1], ids=[i], edit_mask=m[i : i + 1], prompts=[prompts[i]],
                     negative_prompts=[negatives[i]], guidance_scale=scales[i : i + 1])
        assert torch.allclose(alone, together[i : i + 1], atol=1e-5), i
    order = [3, 1, 0, 2]
    shuffled = edit(model, g[order], ids=order, edit_mask=m[order], prompts=[prompts[i] for i in order],
                    negative_prompts=[negatives[i] for i in order], guidance_scale=scales[order])
    assert torch.allclose(shuffled, together[order], atol=1e-5)
    again = edit(model, g, **kw)  # a notebook with the same generators reproduces every output
    assert torch.equal(again, together)


class CountingText:
    """Wraps the text model: records the batch of each call."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, []
        self.config = model.config

    def parameters(self):
        return self.model.parameters()

    def __call__(self, ids, attention_mask=None):
        self.calls.append(ids.shape[0])
        return self.model(ids, attention_mask=attention_mask)


def test_each_distinct_prompt_is_encoded_once_per_call(model):
    counting = CountingText(model.text.model)
    original, model.text.model = model.text.model, counting
    try:
        g = guides(6)
        edit(model, g, prompts=["a cat", "a cat", "a dog", None, "a dog", ""], guidance_scale=3.0)
        assert counting.calls == [3]  # "a cat", "a dog", "" (None, "" and the unconditional half: the same)
        counting.calls.clear()
        edit(model, g, prompts=["a cat"] * 6, negative_prompts=["blue", None, "blue", "dog", None, "a cat"],
             guidance_scale=2.0)
        assert counting.calls == [4]  # "a cat", "blue", "", "dog"
        counting.calls.clear()
        edit(model, g, prompts=["a cat"] * 6, negative_prompts=["blue"] * 6, guidance_scale=1.0)
        assert counting.calls == [1]  # w = 1: no unconditional half, negatives not encoded
    finally:
        model.text.model = original


def test_prompts_none_is_the_empty_prompt(model):
    g = guides(2)
    base = edit(model, g)
    assert torch.equal(base, edit(model, g, prompts=""))
    assert torch.equal(base, edit(model, g, prompts=[None, ""]))
    assert not torch.equal(base, edit(model, g, prompts="a cat"))
    # one string serves every item
    assert torch.equal(edit(model, g, prompts="a dog"), edit(model, g, prompts=["a dog", "a dog"]))


def test_truncated_prompts_are_reported_and_cut_as_diffusers_cuts_them(model):
    long = " ".join(["a red house"] * 30)  # 90 words: over the 77-token limit
    notes = prompt_notes(model, ["a cat", long, None, long])
    assert notes[0] is None and notes[2] is None and notes[1] == notes[3]
    assert "truncated to the text encoder's 77 tokens (15 cut)" in notes[1]
    kept = model.text.tokenizer.decode(model.text.token_ids(long)[1:76])  # what fits between BOS and EOS
    g = guides(1)
    assert torch.equal(edit(model, g, prompts=[long], guidance_scale=2.0),
                       edit(model, g, prompts=[kept], guidance_scale=2.0))


def test_vae_slices_change_memory_not_results(folder):
    whole = load_score_model(folder)
    sliced = load_score_model(folder)
    sliced.vae_batch = 1
    g, m = guides(3), masks(3)
    # per item the same maths; only the float32 rounding of batched kernels differs (measured: 2e-7 on
    # latents, 4e-6 on decoded values of magnitude 2)
    latents = whole.to_model_space(g)
    assert torch.allclose(sliced.to_model_space(g), latents, atol=1e-6)
    assert torch.allclose(sliced.to_pixels(latents), whole.to_pixels(latents), atol=2e-5)
    a = edit(whole, g, edit_mask=m, prompts="a cat", guidance_scale=2.0)
    b = edit(sliced, g, edit_mask=m, prompts="a cat", guidance_scale=2.0)
    assert torch.allclose(a, b, atol=2e-5)
    with pytest.raises(SDEditError, match="vae_batch"):
        LatentScoreModel(whole.net, whole.sde, vae=whole.vae, vae_batch=0)


def test_out_of_memory_halves_the_vae_slice(folder, monkeypatch):
    fresh = load_score_model(folder)
    call = LatentScoreModel._vae_call
    sizes: list[int] = []

    def tight(self, fn, x):  # a device that holds at most one item's activations
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return call(self, fn, x)

    monkeypatch.setattr(LatentScoreModel, "_vae_call", tight)
    g = guides(4)
    latents = fresh.to_model_space(g)
    assert sizes == [4, 2, 1, 1, 1, 1] and fresh.vae_batch == 1  # kept for the next calls
    monkeypatch.setattr(LatentScoreModel, "_vae_call", call)
    assert torch.allclose(latents, load_score_model(folder).to_model_space(g), atol=1e-6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_execution_options_cover_the_unet_and_the_vae(folder, model):
    g = guides(2)
    kw = {"prompts": ["a cat", "a dog"], "guidance_scale": 3.0, "sampler": "ddim"}
    reference = edit(model, g, **kw)
    fast = accelerate(load_score_model(folder), ExecutionOptions(channels_last=True))
    conv = next(mod for mod in fast.vae.modules() if isinstance(mod, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert _rel(edit(fast, g, **kw), reference) < 1e-5
    half = accelerate(load_score_model(folder), ExecutionOptions(autocast="bfloat16"))
    assert 0 < _rel(edit(half, g, **kw), reference) < 5e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights(folder, model, dtype):
    half = load_score_model(folder, dtype=dtype)
    assert half.dtype == dtype and next(half.vae.parameters()).dtype == dtype
    assert next(half.text.model.parameters()).dtype == dtype
    g = guides(2)
    kw = {"prompts": ["a cat", "a dog"], "guidance_scale": 3.0, "sampler": "ddim"}
    out = edit(half, g, **kw)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert _rel(out, edit(model, g, **kw)) < 5e-2


def test_choose_batch_size_measures_the_latent_network(model):
    seen: list[tuple[int, ...]] = []
    net = model.net

    def spy(x, t, **inputs):
        seen.append((*x.shape, *inputs["encoder_hidden_states"].shape[:1]))
        return net(x, t, **inputs)

    model.net = spy
    try:
        assert 1 <= choose_batch_size(model, limit=2, guided=True) <= 2
    finally:
        model.net = net
    assert seen[0] == (2, 4, PIXELS // 8, PIXELS // 8, 2)  # batch 1, doubled by guidance; latent shape
    assert model.can_guide and model.sample_size == PIXELS


def test_errors(model, tiny_model):
    g = guides(2)
    with pytest.raises(SDEditError, match="text-conditional: give prompts"):
        edit(model, g, labels=[0, 1])
    with pytest.raises(SDEditError, match="not text-conditional"):
        sdedit(tiny_model, torch.rand(1, 3, 16, 16), t0=0.3, steps=2, prompts=["a cat"])
    with pytest.raises(SDEditError, match="not text-conditional"):
        sdedit(tiny_model, torch.rand(1, 3, 16, 16), t0=0.3, steps=2, negative_prompts=["a cat"])
    with pytest.raises(SDEditError, match="needs a text-conditional model"):
        prompt_notes(tiny_model, ["a cat"])
    with pytest.raises(SDEditError, match=r"one string \(or None\) per item \(2\), got 3"):
        edit(model, g, prompts=["a", "b", "c"])
    with pytest.raises(SDEditError, match="must be strings"):
        edit(model, g, prompts=["a", 3])
    with pytest.raises(SDEditError, match="negative_prompts"):
        edit(model, g, negative_prompts=["a"], guidance_scale=2.0)
    with pytest.raises(SDEditError, match="not a multiple of the VAE's 8 pixels"):
        edit(model, torch.rand(1, 3, 60, 64))
    with pytest.raises(SDEditError, match="1 channels, the model takes 3"):
        edit(model, torch.rand(1, 3, 64, 64)[:, :1])
    with pytest.raises(SDEditError, match="bind prompts first"):
        model.predict(torch.randn(1, 4, 8, 8), 0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{"channels_last": True}, {"channels_last": True, "compile": "reduce-overhead"}])
def test_cuda_half_precision_and_cuda_graphs(folder, model, options):
    torch._dynamo.reset()
    g, m = guides(2), masks(2)
    kw = {"prompts": ["a cat", "a dog"], "negative_prompts": [None, "blue"], "guidance_scale": 3.0,
          "sampler": "dpmpp_2m_sde", "edit_mask": m}
    reference = edit(model, g, **kw)
    gpu = accelerate(load_score_model(folder, device="cuda", dtype=torch.float16), ExecutionOptions(**options))
    first = edit(gpu, g.cuda(), **{**kw, "edit_mask": m.cuda()}).cpu()
    again = edit(gpu, g.cuda(), **{**kw, "edit_mask": m.cuda()}).cpu()  # replays must not alias outputs
    assert _rel(first, reference) < 5e-2 and torch.equal(first, again)
    keep = m.expand_as(g) == 0
    assert torch.equal(first[keep], g[keep])
