"""Class-conditional models and classifier-free guidance: exact maths, one 2B call a step, no batch coupling."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import DDPM_CONFIG, save_checkpoint, tiny_unet
from gaussian import VAR, ClassGaussianEpsNet, ExactEpsNet, flow_map, guided_mean, posterior_law, vp_scaled_sigma2

from sdedit_kernel import (
    SAMPLERS,
    VPSDE,
    ClassLabels,
    ConditionedModel,
    ExecutionOptions,
    ScoreModel,
    accelerate,
    choose_batch_size,
    generator_for,
    load_score_model,
    sdedit,
)

NAMES = ["cat", "dog", "owl"]
NULL = 3  # num_class_embeds = 4: three classes and the null label, as the training script writes them
GUIDES = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(11))


def write_labels(root, data: dict, sub: str = "") -> None:
    with open(os.path.join(str(root), sub, "labels.json"), "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def cond_model(tmp_path_factory) -> ScoreModel:
    root = save_checkpoint(tmp_path_factory.mktemp("cond") / "m", tiny_unet(num_class_embeds=4, seed=2), DDPM_CONFIG)
    write_labels(root, {"names": NAMES, "null_label": NULL})
    return load_score_model(root)


def gens(ids, seed: int = 7) -> list[torch.Generator]:
    return [generator_for(seed, f"item-{i}") for i in ids]


def edit(model, guides=GUIDES, ids=None, **kw) -> torch.Tensor:
    ids = range(guides.shape[0]) if ids is None else ids
    kw = {"t0": 0.3, "steps": 3, **kw}
    return sdedit(model, guides, generator=gens(ids), **kw)


def with_fixed_labels(model: ScoreModel, labels: list[int]) -> ScoreModel:
    """The conditional network called directly with fixed labels, seen as an unconditional model."""
    fixed = torch.tensor(labels)
    return ScoreModel(lambda x, t: model.net(x, t, class_labels=fixed), model.sde)


def test_loaded_labels(cond_model):
    assert (cond_model.num_classes, cond_model.label_names, cond_model.null_label) == (4, tuple(NAMES), NULL)
    assert cond_model.resolve_label("owl") == 2 and cond_model.resolve_label(1) == 1
    assert cond_model.resolve_label(NULL) == NULL  # asking for the null label is asking for the unconditional model


def test_guidance_one_is_the_plain_conditional_model(cond_model):
    labels = [0, 2, 1, 1]
    out = edit(cond_model, labels=torch.tensor(labels), guidance_scale=1.0)
    assert torch.equal(out, edit(with_fixed_labels(cond_model, labels)))
    assert torch.equal(out, edit(cond_model, labels=["cat", "owl", "dog", 1]))  # by name or index: the same
    assert not torch.equal(out, edit(cond_model, labels=[1, 2, 1, 1]))  # the label is used


def test_unlabelled_items_are_the_unconditional_model(cond_model):
    unconditional = edit(with_fixed_labels(cond_model, [NULL] * 4))
    assert torch.equal(edit(cond_model), unconditional)
    assert torch.equal(edit(cond_model, labels=[None] * 4, guidance_scale=4.0), unconditional)  # w cannot act
    # w = 0 is the unconditional model too (diffusers would skip guidance and give the conditional one)
    zero = edit(cond_model, labels=[0, 1, 2, 0], guidance_scale=0.0)
    assert torch.allclose(zero, unconditional, atol=1e-5)


class Counting:
    """Records the batch and labels of every network call."""

    def __init__(self, net) -> None:
        self.net, self.calls = net, []

    def __call__(self, x, t, class_labels=None):
        self.calls.append((x.shape[0], class_labels.tolist()))
        return self.net(x, t, class_labels=class_labels)


@pytest.mark.parametrize("sampler,calls_per_step", [("ancestral", 1), ("dpmpp_2m_sde", 1), ("pc", 2)])
def test_one_network_call_a_step_on_a_batch_of_2b(cond_model, sampler, calls_per_step):
    counting = Counting(cond_model.net)
    model = ScoreModel(counting, cond_model.sde, classes=cond_model.classes)
    labels = [0, 2, None]
    edit(model, GUIDES[:3], labels=labels, guidance_scale=3.0, steps=4, sampler=sampler)
    assert counting.calls == [(6, [0, 2, NULL, NULL, NULL, NULL])] * (4 * calls_per_step)
    counting.calls.clear()
    edit(model, GUIDES[:3], labels=labels, guidance_scale=1.0, steps=4, sampler=sampler)
    assert counting.calls == [(3, [0, 2, NULL])] * (4 * calls_per_step)  # w = 1: no unconditional half


@pytest.mark.parametrize("sampler", ["ancestral", "dpmpp_2m_sde", "pc"])
def test_outputs_do_not_depend_on_batch_mates(cond_model, sampler):
    labels = [0, "owl", None, 1]
    scales = torch.tensor([1.0, 3.0, 2.0, 0.0])
    mask = torch.zeros(4, 1, 16, 16)
    mask[..., 3:12, 5:14] = 1
    kw = {"sampler": sampler, "edit_mask": mask}
    together = edit(cond_model, labels=labels, guidance_scale=scales, **kw)
    for i in range(4):
        alone = edit(cond_model, GUIDES[i : i + 1], ids=[i], labels=[labels[i]], guidance_scale=scales[i : i + 1],
                     sampler=sampler, edit_mask=mask[i : i + 1])
        assert torch.allclose(alone, together[i : i + 1], atol=1e-5), (sampler, i)
    order = [2, 0, 3, 1]
    shuffled = edit(cond_model, GUIDES[order], ids=order, labels=[labels[i] for i in order],
                    guidance_scale=scales[order], sampler=sampler, edit_mask=mask[order])
    assert torch.allclose(shuffled, together[order], atol=1e-5), sampler


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_guidance_runs_with_every_sampler(cond_model, sampler):
    out = edit(cond_model, labels=[0, 1, 2, None], guidance_scale=2.5, sampler=sampler)
    assert out.shape == GUIDES.shape and torch.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1
    assert not torch.equal(out[:3], edit(cond_model, labels=[0, 1, 2, None], sampler=sampler)[:3])


# -- closed form: per-class Gaussian data, exact eps --------------------------------------------
MEANS = [-0.1, 0.15, 0.0]  # classes 0, 1 and the null label 2, in model space
CASES = [(0, 1.0), (1, 1.0), (0, 3.0), (1, 0.0), (1, 0.5)]  # (label, w) per item
Y = 0.3  # guide in model space


def gaussian_model() -> ScoreModel:
    return ScoreModel(ClassGaussianEpsNet(MEANS), VPSDE.linear(), classes=ClassLabels(3, null_label=2))


def gaussian_run(sampler: str, steps: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = len(CASES)
    out = sdedit(gaussian_model(), torch.full((b, 1, size, size), (Y + 1) / 2), t0=0.5, steps=steps,
                 sampler=sampler, generator=gens(range(b)), labels=[c for c, _ in CASES],
                 guidance_scale=torch.tensor([w for _, w in CASES]))
    z = torch.stack([torch.randn((1, size, size), generator=g) for g in gens(range(b))])  # the first draws
    return out * 2 - 1, z


def test_guided_sde_output_has_the_closed_form_law():
    """w = 1: each class's own posterior; any w: that of N(mu_u + w (mu_c - mu_u), VAR), draw for draw."""
    out, _ = gaussian_run("ancestral", 500, 128)
    sigma2 = vp_scaled_sigma2(0.5)
    for i, (c, w) in enumerate(CASES):
        mu = guided_mean(MEANS[c], MEANS[2], w)
        same = sdedit(ScoreModel(ExactEpsNet(mu), VPSDE.linear()), torch.full((1, 1, 128, 128), (Y + 1) / 2),
                      t0=0.5, steps=500, generator=gens([i]))
        assert torch.allclose(out[i], same[0] * 2 - 1, atol=1e-4), (c, w)
        mean, var = posterior_law(Y, sigma2, mu, VAR)
        m, v = out[i].mean().item(), out[i].var().item()
        # the sampler's own error (fixed-small variance, ~0.07 at 500 steps, as in test_closed_form.py)
        # plus Monte Carlo over 16,384 pixels (sd ~0.015)
        assert abs(m - mean) / math.sqrt(var) + abs(v / var - 1) < 0.12, (c, w, m, mean, v, var)


def test_guided_ode_output_is_the_closed_form_flow_map():
    out, z = gaussian_run("dpmpp_2m", 500, 32)
    sigma2 = vp_scaled_sigma2(0.5)
    for i, (c, w) in enumerate(CASES):
        expected = flow_map(Y, z[i], sigma2, guided_mean(MEANS[c], MEANS[2], w), VAR)
        assert (out[i] - expected).abs().max().item() < 2e-3, (c, w)


def test_guided_prediction_is_the_linear_combination_whatever_the_network_predicts():
    """x0 comes from the guided eps, also for a network that predicts the sample."""
    net = ClassGaussianEpsNet(MEANS)
    eps_model = ScoreModel(net, VPSDE.linear(), classes=ClassLabels(3, null_label=2))
    sde = eps_model.sde

    def as_sample(x, t, class_labels):  # the same exact model, predicting x0
        a, s = sde.marginal((float(t[0]) + 1) / 1000)
        return (x - s * net(x, t, class_labels)) / a

    x0_model = ScoreModel(as_sample, sde, prediction="sample", classes=ClassLabels(3, null_label=2))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for model in (eps_model, x0_model):
        bound = model.bind(3, labels=[0, 1, None], guidance_scale=torch.tensor([2.0, 1.0, 5.0]))
        assert isinstance(bound, ConditionedModel)
        x0, eps = bound.predict(x, 0.3)
        a, s = sde.marginal(0.3)
        e = {c: net(x, torch.full((3,), 299.0), torch.full((3,), c)) for c in (0, 1, 2)}
        assert torch.allclose(eps[0], (e[2] + 2.0 * (e[0] - e[2]))[0], atol=1e-5)
        assert torch.allclose(eps[1], e[1][1], atol=1e-5) and torch.allclose(eps[2], e[2][2], atol=1e-5)
        assert torch.allclose(x0, (x - s * eps) / a, atol=1e-5)


# -- execution options with class labels --------------------------------------------------------
def _cond_unet_model(device: str = "cpu", **options) -> ScoreModel:
    net = tiny_unet(num_class_embeds=4, seed=2).to(device)
    model = ScoreModel(net, VPSDE.linear(), classes=ClassLabels(4, null_label=3))
    return accelerate(model, ExecutionOptions(**options))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_execution_options_pass_the_labels_through():
    kw = {"labels": [0, 1, 2, None], "guidance_scale": 2.0}
    reference = edit(_cond_unet_model(), **kw)
    assert _rel(edit(_cond_unet_model(channels_last=True), **kw), reference) < 1e-5
    assert 0 < _rel(edit(_cond_unet_model(autocast="bfloat16"), **kw), reference) < 2e-2
    model = _cond_unet_model()
    model.sample_size = 16
    assert 1 <= choose_batch_size(model, limit=4, guided=True) <= 4
    assert 1 <= choose_batch_size(model, limit=4) <= 4


class CondSmallNet(torch.nn.Module):
    """Two convolutions, a time scale and a label embedding: compiles in seconds on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 1, 3, padding=1)
        self.embed = torch.nn.Embedding(4, 8)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + t.float().view(-1, 1, 1, 1) / 1000.0
        return self.b(torch.nn.functional.silu(self.a(x) * scale + self.embed(class_labels)[..., None, None]))


def _small(**options) -> ScoreModel:
    return accelerate(ScoreModel(CondSmallNet(), VPSDE.linear(), classes=ClassLabels(4, null_label=3)),
                      ExecutionOptions(**options))


def test_torch_compile_with_labels_matches_eager():
    torch._dynamo.reset()
    kw = {"labels": [0, 1, 2, None], "guidance_scale": torch.tensor([2.0, 1.0, 0.0, 1.0])}
    assert _rel(edit(_small(compile="default"), **kw), edit(_small(), **kw)) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{"autocast": "bfloat16", "channels_last": True},
                                     {"autocast": "bfloat16", "channels_last": True, "compile": "reduce-overhead"}])
def test_cuda_graphs_and_autocast_with_labels(options):
    torch._dynamo.reset()
    kw = {"labels": [0, 1, 2, None], "guidance_scale": torch.tensor([2.0, 1.0, 0.0, 3.0])}
    reference = edit(_cond_unet_model(), **kw)
    model = _cond_unet_model("cuda", **options)
    assert model.cudagraphs == ("compile" in options)
    first = edit(model, GUIDES.cuda(), **kw).cpu()
    again = edit(model, GUIDES.cuda(), **kw).cpu()  # graph replays must not alias earlier outputs
    assert _rel(first, reference) < 2e-2 and torch.equal(first, again)
