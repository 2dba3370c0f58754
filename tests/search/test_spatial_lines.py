"""Spatial search lines (Allen's example script as one function and a CLI command) on a real experiment's profile:
the voxels chosen as the script chooses them, every line the spatial search's path for that experiment, the
injection voxels, the JSON written atomically, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace
from brainmap.data import tables
from brainmap.errors import FormatError
from brainmap.io.nrrd import write_nrrd
from brainmap.search import MatrixStore, SearchInputError
from brainmap.search.connectivity import ConnectivitySearch, connectivity_grid, create_projection_store
from brainmap.search.spatial_lines import (
    injection_centroid_um,
    run_spatial_lines_cli,
    spatial_search_lines,
    write_spatial_lines_json,
)
from brainmap.specimen.synthetic.signal import truth_density

EXPERIMENT = 100141219  # VISp, right hemisphere


@pytest.fixture(scope="module")
def experiment():
    space = ReferenceSpace.bundled(100)
    truth = truth_density("connectivity", experiment_id=EXPERIMENT, resolution_um=100, space=space)
    density = truth.signal_density
    fraction = truth.injection_fraction
    injection_density = np.where(fraction > 0, density, 0).astype(np.float32)
    return dict(space=space, density=density, fraction=fraction, injection_density=injection_density)


@pytest.fixture(scope="module")
def lines(experiment):
    return spatial_search_lines(experiment["density"], experiment["fraction"], experiment["space"],
                                injection_density=experiment["injection_density"], data_set_id=EXPERIMENT)


def _script_voxels(density, space, density_range=(0.04, 0.3)):
    """The example script's selection, with its loop: density in range, fiber-tract annotation (looked up at the
    voxel's corner) zero -- and, ours, inside the brain."""
    fiber = space.make_structure_mask([1009])
    chosen = []
    for index in np.argwhere((density >= density_range[0]) & (density <= density_range[1])):
        i, j, k = index
        if space.annotation[i, j, k] != 0 and not fiber[i, j, k]:
            chosen.append([float(v * 100) for v in index])
    return chosen


def test_lines_start_at_the_scripts_voxels_and_end_at_the_injection_site(experiment, lines):
    expected = _script_voxels(experiment["density"], experiment["space"])
    assert len(expected) > 1000
    assert [line["seed_point"] for line in lines["lines"]] == expected
    site = lines["injection_site"]
    for line in lines["lines"]:
        assert 0.04 <= line["density"] <= 0.3 and line["id"] == EXPERIMENT
        first, last = line["path"][0], line["path"][-1]
        assert first["coord"] == [c + 50.0 for c in line["seed_point"]]  # the seed voxel's centre
        assert first["density"] == pytest.approx(line["density"])
        assert last["coord"] == site
    lengths = [len(line["path"]) for line in lines["lines"]]
    assert min(lengths) >= 1 and max(lengths) < 300


def test_the_injection_site_is_allens_centroid_and_its_voxels_are_thresholded(experiment, lines):
    fraction, density = experiment["fraction"], experiment["injection_density"]
    # AllenSDK's calculate_injection_centroid, literally.
    voxels = np.nonzero(fraction)
    weights = np.multiply(density[voxels], fraction[voxels])
    centroid = np.dot(weights, list(zip(*voxels))) / np.sum(weights) * 100
    np.testing.assert_allclose(lines["injection_site"], centroid, rtol=1e-6)  # AllenSDK sums in float32
    np.testing.assert_allclose(injection_centroid_um(fraction, density, 100), centroid, rtol=1e-6)
    assert lines["injectionCoordinates"] == (np.argwhere(fraction > 0.5) * 100.0).tolist()
    assert len(lines["injectionCoordinates"]) > 0


def test_lines_are_the_spatial_searchs_paths_for_that_experiment(experiment, lines, tmp_path):
    store = create_projection_store(tmp_path / "one", encoding="float32")
    store.append(experiment["density"].ravel(order="F"), [EXPERIMENT], no_data_value=None)
    record = tables.knox_experiments().loc[[EXPERIMENT]].reset_index(drop=True)
    site = lines["injection_site"]
    record["injection_x"], record["injection_y"], record["injection_z"] = site
    search = ConnectivitySearch(record, None, MatrixStore.open(store.path), connectivity_grid())
    rng = np.random.default_rng(5)
    for k in rng.choice(len(lines["lines"]), 25, replace=False):
        line = lines["lines"][k]
        rows = search.spatial(line["seed_point"], section_data_sets=[EXPERIMENT], threshold=0.0).page().rows
        assert len(rows) == 1 and rows[0].path == line["path"]


def test_a_narrower_range_and_keeping_fiber_tracts(experiment):
    space = experiment["space"]
    density = experiment["density"].copy()
    tract = tuple(np.argwhere(space.make_structure_mask([1009]))[500])  # a fiber-tract voxel, planted in range
    density[tract] = 0.2
    tract_point = [float(v * 100) for v in tract]
    narrow = spatial_search_lines(density, experiment["fraction"], space, density_range=(0.1, 0.3))
    assert [line["seed_point"] for line in narrow["lines"]] == _script_voxels(density, space, (0.1, 0.3))
    assert tract_point not in [line["seed_point"] for line in narrow["lines"]]
    with_tracts = spatial_search_lines(density, experiment["fraction"], space, density_range=(0.1, 0.3),
                                       exclude_fiber_tracts=False, injection_threshold=0.9)
    assert tract_point in [line["seed_point"] for line in with_tracts["lines"]]
    assert len(with_tracts["injectionCoordinates"]) == int((experiment["fraction"] > 0.9).sum())


def test_the_json_is_written_atomically_and_reads_back(lines, tmp_path):
    out = tmp_path / "lines.json"
    out.write_text("old")
    data = dict(lines, lines=lines["lines"][:20] + [dict(lines["lines"][0], density=float("nan"))])
    assert write_spatial_lines_json(out, data) == out
    loaded = json.loads(out.read_text())
    assert set(loaded) >= {"lines", "injectionCoordinates", "injection_site", "density_range"}
    assert loaded["lines"][0]["path"][0]["coord"] == lines["lines"][0]["path"][0]["coord"]
    assert loaded["lines"][-1]["density"] is None  # NaN -> null, the file stays valid JSON
    assert not list(tmp_path.glob(".lines.json.*"))  # no temporary left behind


def test_the_cli_reads_allen_named_grid_files(experiment, lines, tmp_path):
    grid_dir = tmp_path / "experiment_100141219"
    grid_dir.mkdir()
    for name in ("density", "fraction", "injection_density"):
        file_name = {"density": "projection_density", "fraction": "injection_fraction"}.get(name, name)
        write_nrrd(grid_dir / f"{file_name}_100.nrrd", experiment[name].astype(np.float32), spacing_um=100)
    summary = run_spatial_lines_cli(grid_dir, tmp_path / "out.json", data_set_id=EXPERIMENT)
    assert summary["lines"] == len(lines["lines"]) and summary["injection_voxels"] == len(lines["injectionCoordinates"])
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["lines"][:50] == json.loads(json.dumps(lines["lines"][:50]))
    assert written["injection_site"] == pytest.approx(lines["injection_site"])
    # A mapping of volumes works too.
    volumes = {"projection_density": experiment["density"], "injection_fraction": experiment["fraction"]}
    assert run_spatial_lines_cli(volumes, tmp_path / "mapping.json", density_range=(0.2, 0.3))["lines"] > 0


def test_bad_inputs_raise_clear_errors(experiment, tmp_path):
    space, density, fraction = experiment["space"], experiment["density"], experiment["fraction"]
    with pytest.raises(SearchInputError, match="density_range"):
        spatial_search_lines(density, fraction, space, density_range=(0.3, 0.1))
    with pytest.raises(SearchInputError, match="density_range"):
        spatial_search_lines(density, fraction, space, density_range=(0.1,))
    with pytest.raises(SearchInputError, match="shape"):
        spatial_search_lines(density[:-1], fraction, space)
    with pytest.raises(SearchInputError, match="no injection"):
        spatial_search_lines(density, np.zeros_like(fraction), space)
    with pytest.raises(FormatError, match="injection_fraction or injection_density"):
        run_spatial_lines_cli({"projection_density": density}, tmp_path / "x.json")
    with pytest.raises(FormatError, match="projection_density"):
        run_spatial_lines_cli({"injection_fraction": fraction}, tmp_path / "x.json")
    with pytest.raises(SearchInputError, match="match no bundled annotation"):
        run_spatial_lines_cli({"projection_density": np.zeros((5, 5, 5)), "injection_fraction": np.ones((5, 5, 5))},
                              tmp_path / "x.json")
    with pytest.raises(FileNotFoundError):
        run_spatial_lines_cli(tmp_path / "missing", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
