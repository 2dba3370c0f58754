"""The alignment's compiled kernels give the same bits as the numpy expressions they replace."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.pipeline.align.register import Sampler


@pytest.mark.parametrize("k, reverse", [(2, True), (2, False), (3, False), (3, True)])
def test_compiled_sampler_same_bits_as_numpy(k: int, reverse: bool) -> None:
    rng = np.random.default_rng(k + 10 * reverse)
    shape = (17, 23, 11)[:k]
    values = rng.normal(size=shape).astype(np.float32)
    origin, spacing = rng.normal(size=k) * 10, rng.uniform(1, 5, size=k)
    extent = (np.array(shape)[::-1] if reverse else np.array(shape)) * spacing
    inside_and_out = origin[:, None] + rng.uniform(-0.2, 1.2, size=(k, 4000)) * extent[:, None]
    on_the_lattice = origin[:, None] + rng.integers(-1, max(shape) + 1, size=(k, 400)) * spacing[:, None]
    points = np.concatenate([inside_and_out, on_the_lattice, np.full((k, 2), np.nan)], axis=1)
    for sampler in (Sampler(values, origin, spacing, reverse=reverse),
                    Sampler(values, origin, spacing, reverse=reverse, with_gradient=False)):
        for gradient in (True, False) if sampler.packed is not None else (False,):
            with np.errstate(invalid="ignore"):
                compiled = sampler(points, gradient=gradient)
                expected = sampler._sample_numpy(points, gradient=gradient)
            assert len(compiled) == len(expected) == (3 if gradient else 2)
            for a, b in zip(compiled, expected):
                assert a.shape == b.shape and a.dtype == b.dtype
                assert a.tobytes() == b.tobytes()
            assert 0 < compiled[1].sum() < points.shape[1]  # points inside and outside were sampled


def test_compiled_sampler_refuses_a_gradient_it_has_not() -> None:
    sampler = Sampler(np.zeros((3, 3), np.float32), (0.0, 0.0), 1.0, reverse=True, with_gradient=False)
    with pytest.raises(ValueError, match="without gradients"):
        sampler(np.zeros((2, 1)))


def test_compiled_dilation_and_erosion_same_masks_as_scipy() -> None:
    from scipy import ndimage

    from brainmap.pipeline.align._morphology import dilate, erode

    rng = np.random.default_rng(0)
    for trial in range(120):
        shape = tuple(int(v) for v in rng.integers(1, 40, size=2))
        if trial % 2:
            mask = rng.uniform(size=shape) < rng.uniform(0, 0.6)
        else:  # blobs with holes and edges touching the border
            mask = ndimage.gaussian_filter(rng.normal(size=shape), 2) > 0.1
        for n in (1, 2, 3, 5):
            assert np.array_equal(dilate(mask, n), ndimage.binary_dilation(mask, iterations=n))
            assert np.array_equal(erode(mask, n), ndimage.binary_erosion(mask, iterations=n, border_value=1))
    assert not dilate(np.zeros((4, 5), bool), 2).any() and erode(np.ones((4, 5), bool), 2).all()
    with pytest.raises(ValueError):
        dilate(np.zeros((2, 2, 2), bool), 1)


def test_compiled_placement_same_bits_as_numpy() -> None:
    from scipy import ndimage

    from brainmap.pipeline.align.reconstruct import (
        SectionStack,
        _place_section_and_mask_numpy,
        covering_grid,
        place_section_and_mask,
    )
    from brainmap.specimen.transforms import Affine2d

    rng = np.random.default_rng(3)
    shapes = [(40, 55), (2, 9), (31, 2), (60, 48)]
    images, masks = [], []
    for shape in shapes:
        mask = ndimage.gaussian_filter(rng.normal(size=shape), 3) > -0.05
        images.append(np.where(mask, rng.uniform(0, 4, size=shape), 0.0).astype(np.float32))
        masks.append(mask)
    images[0][0, :3] = -0.0  # signed zeros go through as numpy's complex products take them
    stack = SectionStack(images, masks, 1, 25.0, [], np.arange(len(shapes)) * 100.0, np.zeros(len(shapes), bool))
    transforms = []
    for k in range(len(shapes)):
        angle, scale = rng.normal() * 0.3, rng.uniform(0.8, 1.2)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
        transforms.append(Affine2d(rotation, rng.normal(size=2) * 200))
    identity = Affine2d(np.eye(2), np.zeros(2))  # on a 12.5 um grid: pixel centres on grid points, edges exactly
    cases = [(k, transforms[k], covering_grid(stack, transforms, 20.0)) for k in range(len(shapes))]
    cases += [(k, identity, covering_grid(stack, [identity] * len(shapes), 12.5)) for k in range(len(shapes))]
    for k, transform, grid in cases:
        compiled = place_section_and_mask(stack, k, transform, grid)
        expected = _place_section_and_mask_numpy(stack, k, transform, grid)
        for a, b in zip(compiled, expected):
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == grid.shape
            assert a.tobytes() == b.tobytes()
        assert compiled[1].max() > 0.5 or not masks[k].any()  # the section landed on the grid
