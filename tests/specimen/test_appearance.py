"""The virtual microscope's appearances that share nothing with the aligner's template, and its warp."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.template import make_template
from brainmap.specimen import read_dataset
from brainmap.specimen.folder import read_section_image
from brainmap.specimen.synthetic import make_specimen, read_truth
from brainmap.specimen.synthetic.appearance import appearance_volume, random_warp
from brainmap.specimen.synthetic.geometry import DamageRates
from brainmap.specimen.synthetic.render import damage_masks


@pytest.fixture(scope="module")
def space() -> ReferenceSpace:
    return ReferenceSpace.bundled(100)


@pytest.mark.parametrize("appearance", ["fluorescence", "brightfield", "rgb"])
def test_appearance_is_not_the_template(space, appearance):
    template = make_template(space, seed=0)
    tissue = (space.annotation > 0) & (appearance_volume(space, 0, appearance) > 0)
    look = appearance_volume(space, 0, appearance)[tissue]
    r = np.corrcoef(look, template[tissue])[0, 1]
    # a different image of the same anatomy: related through the annotation, far from a copy
    assert abs(r) < 0.6, r
    # two seeds give different contrasts
    other = appearance_volume(space, 1, appearance)[tissue]
    assert np.corrcoef(look, other)[0, 1] < 0.9


def test_warp_is_smooth_and_within_range(space):
    warp = random_warp(space, seed=5)
    inner = warp.magnitude_um()[5:-5, 5:-5, 5:-5]
    assert 100.0 <= inner.max() <= 300.0 + 1e-3
    points = np.array([[5000.0, 4000.0, 5000.0], [9000.0, 3000.0, 2000.0]])
    assert np.allclose(warp.inverse_apply(warp.apply(points)), points, atol=0.1)


def test_fold_doubles_a_band_and_bares_its_neighbour():
    keep, _ = damage_masks((40, 40), [{"kind": "fold", "point": [20.0, 20.0], "normal": [1.0, 0.0],
                                        "width_px": 5.0}])
    assert keep[10, 22] == 2.0 and keep[10, 17] == 0.0 and keep[10, 30] == 1.0 and keep[10, 5] == 1.0


@pytest.mark.parametrize("appearance", ["fluorescence", "brightfield", "rgb"])
def test_specimen_with_appearance_and_warp(tmp_path, appearance):
    folder = tmp_path / appearance
    make_specimen("ish", folder, gene="Pvalb", seed=3, pixel_size_um=100.0, truth_resolution_um=100,
                  damage=DamageRates(fold=0.3), progress=False, appearance=appearance, warp=True)
    dataset = read_dataset(folder)
    truth = read_truth(folder)
    assert truth.deformation is not None and truth.deformation.magnitude_um().max() > 50
    channels = ["red", "green", "blue"] if appearance == "rgb" else ["tissue"]
    assert list(dataset.images[0].channels) == channels + ["signal"]
    assert any(d["kind"] == "fold" for i in truth.info["images"] for d in i["damage"])
    image = sorted(dataset.images, key=lambda i: i.section_number)[len(dataset.images) // 2]
    pixels = read_section_image(folder, image, channels[0]).astype(float)
    centre = pixels[pixels.shape[0] // 3: 2 * pixels.shape[0] // 3, pixels.shape[1] // 3: 2 * pixels.shape[1] // 3]
    corner = pixels[:5, :5]
    if appearance == "fluorescence":
        assert np.median(centre) > 3 * np.median(corner)  # bright tissue on a dark slide
    else:
        assert np.median(centre) < 0.9 * np.median(corner)  # dark tissue on a bright slide
