"""The 200 um expression grid's annotation: the same labels from the bundled 25, 50 and 100 um annotations."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.expression_grid import (
    EXPRESSION_GRID_RESOLUTION_UM, EXPRESSION_GRID_SHAPE, expression_grid_annotation, expression_grid_space)


def test_the_expression_grid_space_holds_the_25um_annotations_every_eighth_voxel(space25):
    """expression_grid_space reads the small 100 um file; its labels must be the 25 um annotation's every eighth
    voxel (Allen's 200 um grid), whichever file they come from."""
    space = expression_grid_space()
    from_25 = expression_grid_annotation(space25.annotation, 25)
    assert space.annotation.shape == from_25.shape == EXPRESSION_GRID_SHAPE
    np.testing.assert_array_equal(space.annotation, from_25)
    np.testing.assert_array_equal(space.annotation[:66, :40, :57], space25.annotation[::8, ::8, ::8])
    np.testing.assert_array_equal(space.resolution, [EXPRESSION_GRID_RESOLUTION_UM] * 3)
    assert space.annotation.flags["F_CONTIGUOUS"] and space.annotation.dtype == np.uint32
    np.testing.assert_array_equal(expression_grid_annotation(ReferenceSpace.bundled(50).annotation, 50), from_25)


def test_an_annotation_whose_voxels_do_not_divide_200um_is_refused(space25):
    with pytest.raises(ValueError, match="divide 200 um, got 30 um"):
        expression_grid_annotation(space25.annotation, 30)
    with pytest.raises(ValueError, match="must be 3-D"):
        expression_grid_annotation(space25.annotation[0], 25)
