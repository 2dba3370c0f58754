"""The demo's summary pieces: top structures, the top-view outline and the projection picture."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainmap.demo import projection_picture, top_structures, top_view_outline


def test_top_structures_ranks_summary_structures_and_skips_injection_rows(tree):
    summary = tree.summary_structure_ids()
    rows = pd.DataFrame({
        "structure_id": [summary[0], summary[1], summary[2], 997, summary[3]],
        "hemisphere_id": [1, 2, 1, 1, 3],
        "is_injection": [False, False, True, False, False],
        "normalized_projection_volume": [0.2, 0.9, 5.0, 10.0, 7.0],
    })
    top = top_structures(rows, tree, "normalized_projection_volume", n=5)
    # The injection row, the root (not a summary structure) and hemisphere 3 are left out.
    assert top.structure_id.tolist() == [summary[1], summary[0]]
    assert top.acronym.tolist() == [tree.get_acronym_map()[summary[1]], tree.get_acronym_map()[summary[0]]]


def test_outline_and_picture(space100):
    outline = top_view_outline(space100)
    assert outline.shape == (132, 114)
    assert 0.02 < outline.mean() < 0.3  # lines, not areas
    density = np.zeros(space100.shape)
    density[60:70, 10:20, 30:40] = 0.5
    picture, scale = projection_picture(density, outline, zoom=2)
    assert scale == 0.5  # the top of the colour scale: the density's 99.5th percentile
    assert picture.shape == (264, 228, 3) and picture.dtype == np.uint8
    assert picture[130, 70, 0] == 255  # the bright block, seen from above
    j, k = np.argwhere(~outline)[0]  # no outline and no density there: black
    assert picture[2 * j, 2 * k].sum() == 0 and (picture[np.repeat(np.repeat(outline, 2, 0), 2, 1)] > 200).all()


def test_top_structures_of_allens_ish_rows_without_hemispheres(tree):
    summary = tree.summary_structure_ids()
    rows = pd.DataFrame({"structure_id": [summary[0], summary[1], 997], "expression_energy": [1.0, 3.0, 9.0]})
    top = top_structures(rows, tree, "expression_energy", n=5)
    assert top.structure_id.tolist() == [summary[1], summary[0]] and "hemisphere_id" not in top
