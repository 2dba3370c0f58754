"""Unionize with an annotation streamed slab by slab (issue 18, 10 um): from an annotation file decoded with the
grids, or upsampled by nearest neighbour on the fly; the rows equal those of the whole annotation in memory.

At 100 / 50 um so that the whole-annotation path can be the reference; the 10 um command itself is timed by
``python -m benchmarks unionize_files`` (BRAINMAP_BENCH_10UM=1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace, bundled
from brainmap.atlas.annotation_stream import StreamedAnnotation, nearest_indices
from brainmap.cli import main
from brainmap.errors import UnknownStructureError
from brainmap.io import read_nrrd, write_nrrd
from brainmap.pipeline.unionize import PROJECTION_GRID_NAMES, GridFolder, unionize_annotation, unionize_projection
from brainmap.pipeline.unionize._projection_pass import projection_direct_sums_streamed

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("unionize_recipe_annotation", HERE / "allensdk_unionize" / "recipe.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)


@pytest.fixture(scope="module")
def grids_100(tmp_path_factory):
    annotation, _ = read_nrrd(bundled.annotation_path(100))
    folder = tmp_path_factory.mktemp("grids100")
    for name, volume in recipe.make_grids(np.ascontiguousarray(annotation), 100).items():
        write_nrrd(folder / f"{name}_100.nrrd", volume, spacing_um=100)
    return folder


def test_annotation_file_streamed_with_the_grids_gives_the_in_memory_sums(grids_100):
    space = ReferenceSpace.bundled(100)
    streamed = StreamedAnnotation.from_file(bundled.annotation_path(100))
    assert streamed.shape == space.shape and np.array_equal(streamed.resolution, space.resolution)
    paths = GridFolder(grids_100).paths
    whole = projection_direct_sums_streamed(space, paths)
    for slab_bytes in (1, 132 * 80 * 8 * 7):  # one LR plane a slab, seven
        from_file = projection_direct_sums_streamed(streamed, paths, slab_bytes=slab_bytes, threads=2)
        for field in ("sums", "max_value", "max_flat", "voxels"):
            assert getattr(from_file, field).tobytes() == getattr(whole, field).tobytes(), field
    assert (whole.voxels > 0).sum() > 500


def test_unionize_command_streams_the_annotation_file(grids_100, tmp_path):
    """The bundled annotation, --annotation FILE and an annotation_{res}.nrrd in the grid folder are each decoded
    slab by slab with the grids; the CSVs equal that of the bundled annotation loaded whole (the in-memory pass)."""
    reference, bundled_csv, via_option, via_folder = (tmp_path / f"{name}.csv" for name in "abcd")
    files = GridFolder(grids_100)
    in_memory = {name: files[name] for name in files}  # a plain dict: the in-memory pass, annotation whole
    unionize_projection(in_memory, ReferenceSpace.bundled(100), experiment_id=3).to_csv(reference, index=False)
    assert main(["unionize", str(grids_100), "--experiment-id", "3", "--out", str(bundled_csv)]) == 0
    assert main(["unionize", str(grids_100), "--experiment-id", "3", "--out", str(via_option),
                 "--annotation", str(bundled.annotation_path(100))]) == 0
    for annotation in (None, bundled.annotation_path(100)):
        assert isinstance(unionize_annotation(GridFolder(grids_100), annotation), StreamedAnnotation)
    folder = tmp_path / "with_annotation"
    folder.mkdir()
    for path in grids_100.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / "annotation_100.nrrd").symlink_to(bundled.annotation_path(100))
    assert main(["unionize", str(folder), "--experiment-id", "3", "--out", str(via_folder)]) == 0
    for csv in (bundled_csv, via_option, via_folder):
        assert csv.read_bytes() == reference.read_bytes(), csv.name


def test_upsampled_annotation_is_the_coarse_one_repeated():
    """Nearest neighbour 100 -> 50 um is each voxel repeated twice along each axis (np.repeat); 25 -> 10 um puts
    each 10 um centre in the 25 um voxel that holds it."""
    coarse = ReferenceSpace.bundled(100)
    fine = StreamedAnnotation.upsampled(coarse, 50, (264, 160, 228))
    repeated = coarse.label_index.compact
    for axis in range(3):
        repeated = np.repeat(repeated, 2, axis=axis)
    plane = 264 * 160
    # in order, a plane's twin in the next call, out of order and back (the last plane made is reused)
    for start, k in ((0, 1), (5, 3), (8, 1), (9, 1), (225, 3), (9, 2), (0, 2)):
        assert np.array_equal(fine.compact_slab(start, k), repeated[:, :, start:start + k].ravel(order="F"))
    assert nearest_indices(528, 25.0, 1320, 10.0)[[0, 1, 2, 3, 4, 5, 1319]].tolist() == [0, 0, 1, 1, 1, 2, 527]
    assert fine.compact_slab(0, 1).size == plane


def test_upsampled_annotation_unionizes_as_the_repeated_annotation_in_memory(tmp_path, tree):
    """A 50 um grid unionized with a 100 um annotation (a slice of the bundled one, AP 50-79) upsampled on the fly
    equals the same grid with the repeated annotation held whole."""
    annotation = read_nrrd(bundled.annotation_path(100))[0][50:80]
    repeated = annotation
    for axis in range(3):
        repeated = np.repeat(repeated, 2, axis=axis)
    repeated = np.asfortranarray(repeated)
    shape = repeated.shape
    rng = np.random.default_rng(10)
    mask = (rng.random(shape) < 0.9).astype(float)
    fraction = np.where(rng.random(shape) < 0.05, rng.random(shape), 0.0)
    density = rng.random(shape) ** 2
    pixels = np.rint(rng.uniform(6e4, 8e4, shape))
    grids = {"data_mask": mask, "sum_pixels": pixels, "injection_fraction": fraction,
             "injection_density": fraction * 0.8, "injection_energy": fraction * 2400.0,
             "injection_sum_pixel_intensities": fraction * pixels * 2000.0, "projection_density": density,
             "projection_energy": density * 2500.0, "sum_pixel_intensities": pixels * (300.0 + 2000.0 * density),
             "aav_exclusion_fraction": (rng.random(shape) < 0.01).astype(float)}
    for name, volume in grids.items():
        write_nrrd(tmp_path / f"{name}_50.nrrd", volume, spacing_um=50, compression_level=1)
    in_memory = ReferenceSpace(tree, repeated, 50)
    streamed = StreamedAnnotation.upsampled(ReferenceSpace(tree, annotation, 100), 50, shape)
    expected = unionize_projection(tmp_path, in_memory, experiment_id=9)
    got = unionize_projection(tmp_path, streamed, experiment_id=9)
    assert len(got) > 1000
    assert got.to_csv(index=False) == expected.to_csv(index=False)


def test_unknown_label_in_a_streamed_annotation_is_named(grids_100, tmp_path):
    annotation, header = read_nrrd(bundled.annotation_path(100))
    annotation = annotation.copy()
    annotation[60, 40, 100] = 123456789
    bad = tmp_path / "annotation_100.nrrd"
    write_nrrd(bad, annotation, spacing_um=100)
    with pytest.raises(UnknownStructureError, match="123456789"):
        unionize_projection(grids_100, StreamedAnnotation.from_file(bad))


def test_arrays_need_an_annotation_in_memory():
    streamed = StreamedAnnotation.from_file(bundled.annotation_path(100))
    with pytest.raises(ValueError, match="needs grid files"):
        unionize_projection({name: np.zeros((132, 80, 114)) for name in PROJECTION_GRID_NAMES}, streamed)


def test_ish_unionize_with_a_streamed_annotation_file(tmp_path):
    from brainmap.pipeline.unionize import unionize_expression_by_hemisphere

    space = ReferenceSpace.bundled(100)
    rng = np.random.default_rng(4)
    shape = space.shape
    pixels = np.where(rng.random(shape) < 0.8, rng.integers(1, 900, shape), 0).astype(np.float32)
    grids = {"sum_pixels": pixels, "sum_expressing_pixels": (pixels * rng.random(shape)).round().astype(np.float32),
             "sum_pixel_intensity": (pixels * 100).astype(np.float32),
             "sum_expressing_pixel_intensity": (pixels * rng.random(shape) * 200).astype(np.float32),
             "energy": np.where(rng.random(shape) < 0.9, rng.random(shape) * 3, -1).astype(np.float32)}
    for name, volume in grids.items():
        write_nrrd(tmp_path / f"{name}_100.nrrd", volume, spacing_um=100, compression_level=1)
    streamed = StreamedAnnotation.from_file(bundled.annotation_path(100))
    expected = unionize_expression_by_hemisphere(GridFolder(tmp_path), space, section_data_set_id=2)
    got = unionize_expression_by_hemisphere(GridFolder(tmp_path), streamed, section_data_set_id=2)
    assert len(got) > 500
    assert got.to_csv(index=False) == expected.to_csv(index=False)
