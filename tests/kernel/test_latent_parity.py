"""Latent SDEdit equals diffusers' img2img and 4-channel inpainting, step for step, where their semantics
agree; every place where they do not is shown here and documented in docs/latent.md.

Both sides start from the same latents: diffusers gets our encoded guide (the posterior mean x
scaling_factor) as a 4-channel `image`, which its pipelines take as latents, and the same per-item
generators, so its first draw (the perturbation) and its per-step draws are ours. With "trailing"
spacing and num_inference_steps = steps / t0, its timesteps are exactly our grid's training indices
(t0 = 0.5, 5 steps: 499, 399, 299, 199, 99, then clean).

Tolerance TOL = 1e-4, absolute, on latents (|x| up to ~10 here) and on pixels: diffusers keeps
alphas_cumprod and its step coefficients in float32 (a 1000-term cumulative product: relative error
~1e-6), we keep the schedule in float64; five network calls carry that difference to ~5e-6 measured
(docs/latent.md), so 1e-4 flags any wrong coefficient or off-by-one step (those move outputs by
>1e-2) without flaking on rounding.
"""

from __future__ import annotations

import pytest
import torch
from latent_models import PIXELS, guides, private_cache, save_sd_folder

from sdedit_kernel import load_score_model, sdedit

TOL = 1e-4
PROMPTS = ["a photo of a cat", "a red house", "a photo of a cat"]
NEGATIVES = [None, "blue", "dog"]  # None: the empty prompt, as diffusers' negative_prompt=None gives
# (our sampler and options, diffusers' scheduler, its config changes, extra pipeline arguments)
PARITY = [
    ("ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True}, {}),
    ("ddim", {"eta": 1.0}, "DDIMScheduler", {"set_alpha_to_one": True}, {"eta": 1.0}),
    ("ddim", {}, "EulerDiscreteScheduler", {}, {}),  # deterministic Euler in sigma space is DDIM(eta=0)
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {}, {}),
    ("dpmpp_2m_sde", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("ancestral", {}, "DDPMScheduler", {"variance_type": "fixed_small", "clip_sample": False}, {}),
]

@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with private_cache(tmp_path_factory.mktemp("sdedit-cache")):
        yield


def gens(n: int = 3) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


def _pipeline(cls_name: str, root):
    import diffusers
    from diffusers.utils import logging

    logging.set_verbosity_error()
    pipe = getattr(diffusers, cls_name).from_pretrained(root, safety_checker=None, feature_extractor=None,
                                                        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def setup(request, tmp_path_factory):
    root = save_sd_folder(tmp_path_factory.mktemp(request.param) / "m", request.param, seed=3)
    model = load_score_model(root)
    pipe = _pipeline("StableDiffusionImg2ImgPipeline", root)
    pipe.folder_scheduler = dict(pipe.scheduler.config)  # the folder's own; each test derives its scheduler from it
    return request.param, root, model, pipe


def _scheduler(pipe, name: str, **changes):
    """`name` configured from the folder's scheduler config (never from a previous test's), trailing spacing."""
    import diffusers

    base = getattr(pipe, "folder_scheduler", None) or dict(pipe.scheduler.config)
    return getattr(diffusers, name).from_config(base, timestep_spacing="trailing", **changes)


def run_pair(model, pipe, sampler, options, extra, *, w: float, g=None, t0: float = 0.5, steps: int = 5):
    """(our pixels, our latents, diffusers' pixels, diffusers' latents) for the same start."""
    g = guides(3) if g is None else g
    seen: list[torch.Tensor] = []
    ours = sdedit(model, g, t0=t0, steps=steps, sampler=sampler, prompts=PROMPTS, negative_prompts=NEGATIVES,
                  guidance_scale=w, generator=gens(), callback=lambda p, x: seen.append(x), **options)
    latents = model.to_model_space(g)
    kw = dict(prompt=PROMPTS, negative_prompt=["" if n is None else n for n in NEGATIVES], image=latents,
              strength=t0, num_inference_steps=round(steps / t0), guidance_scale=w, **extra)
    theirs_latents = pipe(**kw, generator=gens(), output_type="latent").images
    theirs = pipe(**kw, generator=gens(), output_type="pt").images
    return ours, seen[-1], theirs, theirs_latents


@pytest.mark.parametrize("sampler,options,scheduler,changes,extra", PARITY,
                         ids=[f"{p[0]}{'-eta1' if p[1] else ''}-{p[2]}" for p in PARITY])
@pytest.mark.parametrize("w", [1.0, 4.5])
def test_img2img_parity(setup, sampler, options, scheduler, changes, extra, w):
    kind, _, model, pipe = setup
    pipe.scheduler = _scheduler(pipe, scheduler, **changes)
    ours, ours_lat, theirs, theirs_lat = run_pair(model, pipe, sampler, options, extra, w=w)
    assert (ours_lat - theirs_lat).abs().max() < TOL, (kind, sampler, w)
    assert (ours - theirs).abs().max() < TOL, (kind, sampler, w)
    assert (ours_lat - model.to_model_space(guides(3))).abs().max() > 0.5  # it did edit


def test_inpaint_parity_with_the_4_channel_pipeline(setup):
    """diffusers' 4-channel inpainting re-noises the kept latents to the NEXT timestep, as our kept-region
    rule does. A mask on the 8-pixel grid makes its nearest-neighbour resize and our any-pixel rule agree."""
    kind, root, model, _ = setup
    pipe = _pipeline("StableDiffusionInpaintPipeline", root)
    pipe.scheduler = _scheduler(pipe, "DDIMScheduler", set_alpha_to_one=True)
    g = guides(3)
    mask = torch.zeros(3, 1, PIXELS, PIXELS)
    mask[0, :, 8:40, 16:48] = 1
    mask[1, :, :24, :] = 1
    mask[2, :, 32:, 8:56] = 1
    seen: list[torch.Tensor] = []
    ours = sdedit(model, g, t0=0.6, steps=6, sampler="ddim", edit_mask=mask, prompts=PROMPTS,
                  negative_prompts=NEGATIVES, guidance_scale=3.0, generator=gens(),
                  callback=lambda p, x: seen.append(x))
    latents = model.to_model_space(g)
    kw = dict(prompt=PROMPTS, negative_prompt=["" if n is None else n for n in NEGATIVES], image=latents,
              masked_image_latents=latents, mask_image=mask, height=PIXELS, width=PIXELS, strength=0.6,
              num_inference_steps=10, guidance_scale=3.0)
    theirs_lat = pipe(**kw, generator=gens(), output_type="latent").images
    theirs = pipe(**kw, generator=gens(), output_type="pt").images
    assert (seen[-1] - theirs_lat).abs().max() < TOL, kind
    edited = mask.expand_as(g) == 1
    assert (ours[edited] - theirs[edited]).abs().max() < TOL, kind
    # kept pixels: ours are the guide's own; diffusers' went through the VAE and are not
    assert torch.equal(ours[~edited], g[~edited])
    assert (theirs[~edited] - g[~edited]).abs().max() > 0.05


def test_scaled_linear_is_diffusers_schedule():
    """SD's schedule: betas linear in sqrt(beta) from 0.00085 to 0.012 over 1000 steps."""
    from diffusers import DDIMScheduler

    from sdedit_kernel import VPSDE

    sde = VPSDE.scaled_linear(0.00085, 0.012, 1000)
    ours = torch.tensor([sde.marginal((i + 1) / 1000)[0] ** 2 for i in range(1000)], dtype=torch.float64)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    exact = torch.cumprod(1 - betas, 0)  # diffusers' formula, evaluated in float64
    assert ((ours - exact).abs() / exact).max() < 1e-12
    theirs = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    # diffusers' own tensor is float32: its cumulative product carries float32 rounding, nothing more
    assert theirs.dtype == torch.float32 and ((ours - theirs.double()).abs() / exact).max() < 1e-5


# -- the differences, demonstrated ---------------------------------------------------------------
def test_leading_spacing_starts_below_t0_and_strength_rounds_steps(setup):
    _, _, model, pipe = setup
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.folder_scheduler, timestep_spacing="leading")
    pipe.scheduler.set_timesteps(10)
    timesteps, n = pipe.get_timesteps(10, 0.5, "cpu")
    assert n == 5 and int(timesteps[0]) == 401  # strength 0.5 starts at index 401, not 499 (steps_offset 1)
    assert round(model.sde.time_grid(0.5, 5)[0] * 1000) - 1 == 499  # ours: t0 = 0.5 is index 499
    pipe.scheduler.set_timesteps(10)
    assert pipe.get_timesteps(10, 0.05, "cpu")[1] == 0  # int(10 x 0.05) = 0 steps (diffusers #1867)
    pipe.scheduler.set_timesteps(10)
    assert pipe.get_timesteps(10, 0.37, "cpu")[1] == 3  # 3.7 steps asked, 3 run, from index 299
    out = sdedit(model, guides(1), t0=0.05, steps=None, sampler="ddim", generator=gens(1))  # ours: 50 steps
    assert out.shape == (1, 3, PIXELS, PIXELS)


def test_final_step_lands_on_clean_data_unlike_set_alpha_to_one_false(setup):
    """SD's scheduler configs say set_alpha_to_one=false: DDIM's last step then lands on alphas_cumprod[0]
    (a little noise left, scaled). Our last step lands on t = 0 exactly, like set_alpha_to_one=true."""
    _, _, model, pipe = setup
    pipe.scheduler = _scheduler(pipe, "DDIMScheduler", set_alpha_to_one=False)
    ours, ours_lat, _, theirs_lat = run_pair(model, pipe, "ddim", {}, {}, w=2.0)
    assert (ours_lat - theirs_lat).abs().max() > 1e-3


def test_diffusers_samples_the_vae_posterior_we_take_its_mean(setup):
    _, _, model, pipe = setup
    g = guides(2)
    posterior = pipe.vae.encode(g * 2 - 1).latent_dist
    sampled = posterior.sample(torch.Generator().manual_seed(0)) * model.scaling_factor  # what img2img does
    ours = model.to_model_space(g)
    assert torch.allclose(ours, posterior.mean * model.scaling_factor, atol=1e-6)
    assert torch.equal(model.to_model_space(g), ours)  # deterministic
    assert (sampled - ours).abs().max() > 1e-3


def test_guidance_below_one_and_negative_prompts(setup):
    """diffusers skips guidance for every w <= 1 (negative prompts are then ignored); we apply the formula,
    so w = 0 is the model conditioned on the negative prompt alone."""
    _, _, model, pipe = setup
    pipe.scheduler = _scheduler(pipe, "DDIMScheduler", set_alpha_to_one=True)
    _, _, theirs_half, _ = run_pair(model, pipe, "ddim", {}, {}, w=0.5)
    ours_one, _, theirs_one, _ = run_pair(model, pipe, "ddim", {}, {}, w=1.0)
    assert torch.equal(theirs_half, theirs_one)  # diffusers: 0.5 is 1
    ours_half, _, _, _ = run_pair(model, pipe, "ddim", {}, {}, w=0.5)
    assert (ours_half - ours_one).abs().max() > 1e-3  # ours: 0.5 is between the two halves
    g = guides(3)
    zero = sdedit(model, g, t0=0.5, steps=5, sampler="ddim", prompts=PROMPTS, negative_prompts=NEGATIVES,
                  guidance_scale=0.0, generator=gens())
    negative_only = sdedit(model, g, t0=0.5, steps=5, sampler="ddim", prompts=NEGATIVES, generator=gens())
    assert (zero - negative_only).abs().max() < TOL
