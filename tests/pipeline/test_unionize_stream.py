"""Projection unionize over files read slab by slab (issue 18): the CSV `brainmap unionize` writes is byte for byte
the one the in-memory pass writes, and the rows still equal AllenSDK 2.16.2's (the oracle of
test_unionize_allensdk.py), whatever the slab size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainmap.atlas import ReferenceSpace, bundled
from brainmap.cli import main
from brainmap.io import read_nrrd, write_nrrd
from brainmap.pipeline.unionize import GridFolder, unionize_annotation, unionize_projection
from brainmap.pipeline.unionize import _projection_pass
from brainmap.pipeline.unionize._projection_pass import projection_direct_sums, projection_direct_sums_streamed

HERE = Path(__file__).resolve().parent
ORACLE = HERE.parent / "data" / "allensdk_unionize"
_spec = importlib.util.spec_from_file_location("unionize_recipe_stream", HERE / "allensdk_unionize" / "recipe.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)
_oracle_spec = importlib.util.spec_from_file_location("unionize_oracle_test", HERE / "test_unionize_allensdk.py")
oracle_test = importlib.util.module_from_spec(_oracle_spec)
_oracle_spec.loader.exec_module(oracle_test)


@pytest.fixture(scope="module")
def grid_folder(tmp_path_factory, tree):
    """The oracle's 100 um grids written as Allen writes them (gzip doubles, {name}_100.nrrd)."""
    annotation, _ = read_nrrd(bundled.annotation_path(100))
    grids = recipe.make_grids(np.ascontiguousarray(annotation), 100)
    folder = tmp_path_factory.mktemp("grids")
    for name, volume in grids.items():
        write_nrrd(folder / f"{name}_100.nrrd", volume, spacing_um=100)
    return folder, grids


def test_streamed_sums_equal_the_in_memory_pass_bit_for_bit(grid_folder):
    folder, _ = grid_folder
    space = ReferenceSpace.bundled(100)
    files = GridFolder(folder)
    whole = projection_direct_sums(space, files, files["aav_exclusion_fraction"])
    for slab_bytes in (1, 132 * 80 * 8 * 7, 1 << 30):  # one LR plane, 7 planes, the whole volume
        streamed = projection_direct_sums_streamed(space, files.paths, slab_bytes=slab_bytes, threads=2)
        for field in ("sums", "max_value", "max_flat", "voxels"):
            assert getattr(streamed, field).tobytes() == getattr(whole, field).tobytes(), field


def test_unionize_command_csv_is_byte_for_byte_todays(grid_folder, tmp_path, monkeypatch):
    folder, _ = grid_folder
    out_streamed, out_memory = tmp_path / "streamed.csv", tmp_path / "memory.csv"
    assert main(["unionize", str(folder), "--experiment-id", "7", "--out", str(out_streamed)]) == 0
    # Today's path: every volume read whole, one pass over them in memory.
    monkeypatch.setattr("brainmap.pipeline.unionize.projection.projection_direct_sums_streamed",
                        lambda space, paths: pytest.fail("the in-memory run must not stream"))
    space = ReferenceSpace.bundled(100)
    files = GridFolder(folder)
    in_memory = {name: files[name] for name in files}  # a plain dict: the in-memory pass
    unionize_projection(in_memory, space, experiment_id=7).to_csv(out_memory, index=False)
    assert out_streamed.read_bytes() == out_memory.read_bytes()


def test_streamed_rows_equal_allensdk(grid_folder, tree):
    folder, _ = grid_folder
    space = ReferenceSpace(tree, read_nrrd(bundled.annotation_path(100))[0], 100)  # file (Fortran) order
    assert space.label_index.compact.flags.f_contiguous
    ours = unionize_projection(folder, space, experiment_id=1)
    oracle = pd.read_csv(ORACLE / "rows_100um.csv.gz", comment="#")
    differing = oracle_test._differing_rows(ours, oracle)
    assert len(differing) == 0, f"{len(differing)} of {len(oracle)} rows differ:\n{differing.head(10).T}"


def test_volume_of_another_shape_is_named(grid_folder, tmp_path):
    folder, grids = grid_folder
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, volume in grids.items():
        write_nrrd(bad / f"{name}_100.nrrd", volume[:, :, :-1] if name == "sum_pixels" else volume, spacing_um=100)
    with pytest.raises(Exception, match="sum_pixels_100.nrrd: sizes 132 80 113 differ"):
        unionize_projection(bad, ReferenceSpace.bundled(100))


@pytest.mark.parametrize("slab_bytes", [132 * 80 * 4 * 5, 1 << 23])  # 5 planes a slab; one slab
def test_ish_unionize_over_slabs_is_the_in_memory_table_bit_for_bit(tmp_path, slab_bytes, monkeypatch):
    """ISH grids (float32, energy -1 where there is no data) in files, read slab by slab, against the same
    volumes in memory: every figure, both tables, bit for bit."""
    from brainmap.pipeline.unionize import ish, unionize_expression, unionize_expression_by_hemisphere

    space = ReferenceSpace.bundled(100)
    rng = np.random.default_rng(18)
    shape = space.shape
    pixels = np.where(rng.random(shape) < 0.8, rng.integers(1, 900, shape), 0).astype(np.float32)
    expressing = (pixels * rng.random(shape) ** 3).round().astype(np.float32)
    grids = {
        "sum_pixels": pixels, "sum_expressing_pixels": expressing,
        "sum_pixel_intensity": (pixels * rng.uniform(50, 200, shape)).astype(np.float32),
        "sum_expressing_pixel_intensity": (expressing * rng.uniform(100, 255, shape)).astype(np.float32),
        "energy": np.where(rng.random(shape) < 0.9, rng.random(shape) * 3, -1).astype(np.float32),
    }
    for name, volume in grids.items():
        write_nrrd(tmp_path / f"{name}_100.nrrd", volume, spacing_um=100)
    streamed = ish._direct_sums_streamed
    calls = []
    monkeypatch.setattr(ish, "_direct_sums_streamed",
                        lambda *a, **k: calls.append(1) or streamed(*a, **k, slab_bytes=slab_bytes))
    for function in (unionize_expression, unionize_expression_by_hemisphere):
        from_files = function(GridFolder(tmp_path), space, section_data_set_id=5)
        in_memory = function(grids, space, section_data_set_id=5)
        assert len(from_files) > 500
        assert from_files.to_csv(index=False) == in_memory.to_csv(index=False)
        pd.testing.assert_frame_equal(from_files, in_memory, check_exact=True)
    assert len(calls) == 2  # the folder went through the slabs both times


def test_grid_files_start_decoding_before_the_unionizers_load(grid_folder, tmp_path):
    """`brainmap unionize` starts its files decoding before it imports numba and pandas: the module that starts it
    imports neither, and slabs started early give the rows of a plain call; slabs of other files are refused."""
    import subprocess
    import sys

    probe = ("import sys; import brainmap.pipeline.unionize.grids, brainmap.io.nrrd_stream; "
             "print(sorted({'numba', 'pandas'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    from brainmap.pipeline.unionize.grids import projection_volume_slabs

    folder, _ = grid_folder
    files = GridFolder(folder)
    space = unionize_annotation(files)
    plain = unionize_projection(files, space, experiment_id=7)
    with projection_volume_slabs(files) as slabs:
        early = unionize_projection(files, space, experiment_id=7, slabs=slabs)
    pd.testing.assert_frame_equal(early, plain)
    other = tmp_path / "other"
    other.mkdir()
    for path in folder.iterdir():
        (other / path.name).symlink_to(path)
    with pytest.raises(ValueError, match="not of this unionize's files"):
        unionize_projection(files, space, slabs=projection_volume_slabs(GridFolder(other)))
