"""Reference-aligned channel volumes (Allen's ImagesResampledTo25MicronARA) on hand-made sections whose pixels
map straight onto the reference: the mean intensity per voxel is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.pipeline.grid.channels import CHANNEL_VOLUMES_FILE, resample_channels, write_channel_volumes
from brainmap.specimen.model import SectionDataSet, SectionImage, nominal_tvr
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d

PIXEL_UM = 20.0
ROWS, COLS = 400, 570  # DV 0..8000 um, LR 0..11400 um


def _dataset(numbers=range(60, 64)) -> SectionDataSet:
    tvr = Affine3d(nominal_tvr("coronal").matrix, np.array([50.0, 0.0, 0.0]))  # planes mid-voxel
    images = [SectionImage(id=1000 + n, section_number=n, channels=["tissue", "signal"], width=COLS, height=ROWS,
                           alignment2d=Alignment2d.from_tsv(Affine2d(np.eye(2) * PIXEL_UM, np.zeros(2))))
              for n in numbers]
    return SectionDataSet(id=1, plane="coronal", product="connectivity", section_thickness_um=100.0,
                          sampling_um=100.0, pixel_size_um=PIXEL_UM, images=images,
                          alignment3d=Alignment3d.from_tvr(tvr))


def _channels(image: SectionImage) -> dict[str, np.ndarray]:
    lr = (np.arange(COLS) + 0.5) * PIXEL_UM
    tissue = np.where(lr < 6000, 300, 50).astype(np.uint16)
    signal = np.rint(lr / 10).astype(np.uint16)  # 0.1 count per um of LR
    return {"tissue": np.broadcast_to(tissue, (ROWS, COLS)).copy(),
            "signal": np.broadcast_to(signal, (ROWS, COLS)).copy()}


def test_mean_intensity_per_voxel_and_the_zip(tmp_path):
    volumes = resample_channels(_dataset(), _channels, resolution_um=100)
    red, green, blue = volumes["red"], volumes["green"], volumes["blue"]
    assert red.shape == (132, 80, 114) and red.dtype == np.float32
    inner = (slice(60, 64), slice(5, 75))
    assert np.allclose(red[inner][:, :, 5:55], 300) and np.allclose(red[inner][:, :, 65:110], 50)
    lr_centres = (np.arange(114) + 0.5) * 100
    assert np.allclose(green[inner][:, :, 5:110], lr_centres[5:110] / 10, atol=0.6)  # rounding of the counts
    assert not blue.any()  # no blue channel
    assert not red[:59].any() and not red[65:].any()  # only the slabs the sections stand for
    path = write_channel_volumes(tmp_path, volumes, resolution_um=100)
    assert path.name == CHANNEL_VOLUMES_FILE == "ImagesResampledTo25MicronARA.zip"
    from brainmap.io.grid_bundle import read_grid_bundle

    bundle = read_grid_bundle(path)
    assert set(bundle) == {"red", "green", "blue"}
    data, header = bundle["red"]
    assert np.array_equal(data, red) and tuple(header.element_spacing) == (100.0, 100.0, 100.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_sums_added_slab_major_are_the_grids_fortran_volume(axis):
    """The adding layout (the sections' axis slowest) gives, voxel for voxel and bit for bit, the (AP, DV, LR)
    Fortran-order volume that adding in the grid's own order gives, for a section along each axis."""
    from brainmap.pipeline.grid._scatter import add_unique
    from brainmap.pipeline.grid.channels import _SlabMajor

    shape = (23, 17, 11)
    rng = np.random.default_rng(axis)
    layout = _SlabMajor(shape, axis)
    want = np.zeros(shape, dtype=np.float32, order="F")
    got = layout.zeros()
    for _ in range(3):  # three partials, each voxel once per partial
        index = np.sort(rng.choice(want.size, 900, replace=False))
        values = rng.normal(size=index.size) * 1e3
        flat = want.reshape(-1, order="F")
        flat[index] = flat[index] + values
        add_unique(got, layout.index(index), values)
    volume = layout.volume(got)
    assert volume.shape == shape and volume.flags.f_contiguous
    assert volume.tobytes(order="F") == want.tobytes(order="F")
    assert np.unravel_index(layout.index(np.array([1])), [shape[a] for a in layout.order], order="F")[
        layout.order.index(0)] == 1  # flat index 1 of the grid is AP 1, DV 0, LR 0


def test_a_sagittal_data_set_lands_on_its_lr_slabs():
    """A sagittal data set (sections along LR, the last axis: the grid's own order) gets its channels in the
    slabs its sections stand for."""
    tvr = Affine3d(nominal_tvr("sagittal").matrix, np.array([0.0, 0.0, 50.0]))
    images = [SectionImage(id=2000 + n, section_number=n, channels=["tissue"], width=ROWS, height=ROWS,
                           alignment2d=Alignment2d.from_tsv(Affine2d(np.eye(2) * PIXEL_UM, np.zeros(2))))
              for n in range(40, 43)]
    dataset = SectionDataSet(id=2, plane="sagittal", product="connectivity", section_thickness_um=100.0,
                             sampling_um=100.0, pixel_size_um=PIXEL_UM, images=images,
                             alignment3d=Alignment3d.from_tvr(tvr))
    red = resample_channels(dataset, lambda image: {"tissue": np.full((ROWS, ROWS), 200, np.uint16)},
                            resolution_um=100)["red"]
    assert red.flags.f_contiguous
    lr = np.flatnonzero(red.any(axis=(0, 1)))
    assert lr.min() >= 39 and lr.max() <= 43 and np.allclose(red[red > 0], 200)
