"""Simulated stroke guides: deterministic, quantised to the stated levels, seeded image choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.quality.strokes import make_stroke_guides, pick_indices, quantise, stroke_levels


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 28, 28, generator=g)
    x[:, :, :4] = 0.0  # a flat region must stay flat
    return x


@pytest.mark.parametrize("blur", ["gaussian", "median"])
@pytest.mark.parametrize("levels", [2, 4, 6])
def test_guides_take_only_the_stated_levels(images, blur, levels):
    guides = make_stroke_guides(images, blur=blur, levels=levels)
    assert guides.shape == images.shape and guides.dtype == torch.float32
    allowed = stroke_levels(levels)
    assert torch.isin(guides.unique(), allowed).all()
    assert guides.min() >= 0.0 and guides.max() <= 1.0


def test_guides_are_deterministic(images):
    assert torch.equal(make_stroke_guides(images), make_stroke_guides(images.clone()))


def test_blur_removes_fine_detail():
    stripes = torch.zeros(1, 1, 28, 28)
    stripes[..., ::2] = 0.6  # one-pixel stripes average out to a flat grey near 0.3
    guide = make_stroke_guides(stripes, levels=4)
    assert guide[..., 6:22, 6:22].unique().tolist() == [stroke_levels(4)[1].item()]


def test_flat_regions_stay_flat(images):
    assert (make_stroke_guides(images)[:, :, :1] == 0).all()


def test_quantise_rounds_to_nearest_level():
    x = torch.tensor([0.0, 0.16, 0.17, 0.5, 0.83, 0.84, 1.0])
    assert torch.allclose(quantise(x, 4), torch.tensor([0.0, 0.0, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0]))


def test_bad_parameters_are_refused(images):
    with pytest.raises(ValueError):
        make_stroke_guides(images, blur_size=4)
    with pytest.raises(ValueError):
        make_stroke_guides(images, blur="box")
    with pytest.raises(ValueError):
        stroke_levels(1)


def test_pick_indices_disjoint_and_seeded():
    a = pick_indices(100, [10, 20, 30], seed=3)
    b = pick_indices(100, [10, 20, 30], seed=3)
    c = pick_indices(100, [10, 20, 30], seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert [len(x) for x in a] == [10, 20, 30]
    assert len(np.unique(np.concatenate(a))) == 60
    with pytest.raises(ValueError):
        pick_indices(10, [6, 6], seed=0)
