"""Structure unionization against a per-structure brute force, Allen's formulas, and the real Allen rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainmap.errors import FormatError
from brainmap.io.nrrd import write_nrrd
from brainmap.pipeline.unionize import (
    ISH_HEMISPHERE_COLUMNS,
    ISH_UNIONIZE_COLUMNS,
    PROJECTION_UNIONIZE_COLUMNS,
    GridFolder,
    unionize_expression,
    unionize_expression_by_hemisphere,
    unionize_projection,
)

SCALE = 0.35**2 * 100 * 1e-9  # mm3 per pixel on the 100 um grid


@pytest.fixture(scope="module")
def projection_grids(space100):
    """Random connectivity grids on the 100 um annotation with an injection blob, exclusions and no-data voxels."""
    rng = np.random.default_rng(11)
    shape = space100.shape
    grids = {
        "data_mask": (rng.random(shape) > 0.05).astype(np.float32),
        "sum_pixels": rng.uniform(1e4, 1e5, shape),
        "projection_density": rng.random(shape) ** 4,
        "projection_energy": rng.random(shape) * 50,
        "sum_pixel_intensities": rng.uniform(1e6, 1e7, shape),
        "aav_exclusion_fraction": (rng.random(shape) > 0.97).astype(np.float32) * rng.random(shape),
    }
    ap, dv, lr = np.indices(shape)
    blob = np.exp(-(((ap - 90) ** 2 + (dv - 20) ** 2 + (lr - 85) ** 2) / 18.0))
    grids["injection_fraction"] = np.where(blob > 0.05, blob, 0.0)
    grids["injection_density"] = grids["injection_fraction"] * rng.uniform(0.5, 1.0, shape)
    grids["injection_energy"] = grids["injection_density"] * 200
    grids["injection_sum_pixel_intensities"] = grids["sum_pixel_intensities"] * grids["injection_fraction"]
    return grids


def _brute_force_record(space, tree, grids, sid, hemisphere, injection):
    """Allen's semantics, one structure at a time (slow and obvious)."""
    mask = np.isin(space.annotation, tree.descendant_ids([sid])[0]) & (grids["data_mask"] > 0)
    mid = space.shape[2] // 2
    if hemisphere == 1:
        mask[:, :, mid:] = False
    elif hemisphere == 2:
        mask[:, :, :mid] = False
    sp = grids["sum_pixels"]
    if injection:
        return {
            "sum_pixels": (sp * grids["injection_fraction"])[mask].sum(),
            "sum_projection_pixels": (sp * grids["injection_density"])[mask].sum(),
            "sum_projection_pixel_intensity": (sp * grids["injection_energy"])[mask].sum(),
            "sum_pixel_intensity": grids["injection_sum_pixel_intensities"][mask].sum(),
            "max_voxel_density": grids["injection_density"][mask].max(initial=0),
        }
    inj = _brute_force_record(space, tree, grids, sid, hemisphere, True)
    counted = mask & ((grids["injection_fraction"] > 0) | ~(grids["aav_exclusion_fraction"] > 0))
    density_outside = grids["projection_density"] * (1 - grids["injection_fraction"])
    return {
        "sum_pixels": sp[counted].sum() - inj["sum_pixels"],
        "sum_projection_pixels": (sp * grids["projection_density"])[counted].sum() - inj["sum_projection_pixels"],
        "sum_projection_pixel_intensity": (sp * grids["projection_energy"])[counted].sum()
        - inj["sum_projection_pixel_intensity"],
        "sum_pixel_intensity": grids["sum_pixel_intensities"][counted].sum() - inj["sum_pixel_intensity"],
        "max_voxel_density": density_outside[counted].max(initial=0),
    }


def test_projection_unionize_matches_brute_force(space100, tree, projection_grids):
    table = unionize_projection(projection_grids, space100, experiment_id=42)
    assert list(table.columns) == PROJECTION_UNIONIZE_COLUMNS
    assert (table.experiment_id == 42).all()
    indexed = table.set_index(["structure_id", "hemisphere_id", "is_injection"])
    rng = np.random.default_rng(5)
    sample = [997, 315, 385, 8] + rng.choice(tree.summary_structure_ids(), 20, replace=False).tolist()
    injection_sites = [s for s in tree.node_ids() if (s, 3, True) in indexed.index]
    sample += injection_sites[-5:]
    # The whole brain's injection volume, brute force, normalizes every row.
    root_injection = _brute_force_record(space100, tree, projection_grids, 997, 3, True)["sum_projection_pixels"]
    for sid in sample:
        for hemisphere in (1, 2, 3):
            for injection in (True, False):
                expected = _brute_force_record(space100, tree, projection_grids, sid, hemisphere, injection)
                key = (sid, hemisphere, injection)
                if expected["sum_pixels"] <= 0:
                    assert key not in indexed.index
                    continue
                row = indexed.loc[key]
                # Allen's ratios and volumes, from the brute-force sums.
                expected["projection_density"] = expected["sum_projection_pixels"] / expected["sum_pixels"]
                expected["projection_energy"] = expected["sum_projection_pixel_intensity"] / expected["sum_pixels"]
                expected["projection_intensity"] = (expected["sum_projection_pixel_intensity"]
                                                    / expected["sum_projection_pixels"])
                expected["volume"] = expected["sum_pixels"] * SCALE
                expected["projection_volume"] = expected["sum_projection_pixels"] * SCALE
                expected["normalized_projection_volume"] = expected["sum_projection_pixels"] / root_injection
                for column, value in expected.items():
                    assert row[column] == pytest.approx(value, rel=1e-9, abs=1e-6), (key, column)


def test_projection_unionize_is_the_same_in_any_memory_order_and_dtype(space100, projection_grids):
    """The compiled pass reads volumes where they lie: C or Fortran order, float32, a boolean data mask."""
    reference = unionize_projection(projection_grids, space100)
    other = {name: np.asfortranarray(v.astype(np.float32)) if name != "data_mask" else np.ascontiguousarray(v > 0)
             for name, v in projection_grids.items()}
    other["sum_pixels"] = np.ascontiguousarray(projection_grids["sum_pixels"])
    table = unionize_projection(other, space100)
    assert len(table) == len(reference)
    for column in ("sum_pixels", "sum_projection_pixels", "sum_pixel_intensity", "max_voxel_density"):
        np.testing.assert_allclose(table[column], reference[column], rtol=2e-6, err_msg=column)
    for column in ("structure_id", "hemisphere_id", "max_voxel_x", "max_voxel_y", "max_voxel_z"):
        np.testing.assert_array_equal(table[column], reference[column], err_msg=column)


def test_projection_rows_roll_up_the_ontology(space100, tree, projection_grids):
    """Every row holds at least as much as each of its children's rows, and both hemispheres add up."""
    table = unionize_projection(projection_grids, space100)
    assert (table.sum_pixels > 0).all()  # rows with sum_pixels == 0 are left out
    parent = {s["id"]: s["structure_id_path"][-2] for s in tree.nodes() if len(s["structure_id_path"]) > 1}
    children = table.assign(parent_id=table.structure_id.map(parent)).dropna(subset=["parent_id"])
    pairs = children.merge(table, left_on=["parent_id", "hemisphere_id", "is_injection"],
                           right_on=["structure_id", "hemisphere_id", "is_injection"], suffixes=("", "_parent"))
    assert len(pairs) == len(children) > 1000  # every child's parent has a row
    for column in ("sum_pixels", "sum_projection_pixels", "sum_pixel_intensity", "max_voxel_density"):
        assert (pairs[f"{column}_parent"] >= pairs[column] * (1 - 1e-12)).all(), column
    assert (pairs.sum_pixels_parent > pairs.sum_pixels).mean() > 0.5  # parents usually hold more than one child
    pivot = table.pivot_table(index=["structure_id", "is_injection"], columns="hemisphere_id", values="sum_pixels")
    both = pivot.dropna()
    np.testing.assert_allclose(both[3], both[1] + both[2])
    # The max voxel coordinates lie on the 100 um grid, in um (AP, DV, LR).
    for axis in "xyz":
        assert (table[f"max_voxel_{axis}"] % 100 == 0).all()


def test_max_voxel_of_the_injection_is_its_densest_voxel(space100, projection_grids):
    table = unionize_projection(projection_grids, space100)
    root = table.query("is_injection and structure_id == 997 and hemisphere_id == 3").iloc[0]
    density = np.where((projection_grids["data_mask"] > 0) & (space100.annotation > 0), projection_grids["injection_density"], 0)
    ijk = np.unravel_index(np.argmax(density), density.shape)
    assert root.max_voxel_density == pytest.approx(density.max())
    assert (root.max_voxel_x, root.max_voxel_y, root.max_voxel_z) == tuple(int(i) * 100 for i in ijk)


def test_unionize_reads_an_allen_named_grid_folder(tmp_path, space100, projection_grids):
    for name, volume in projection_grids.items():
        write_nrrd(tmp_path / f"{name}_100.nrrd", volume.astype(np.float64), spacing_um=100, encoding="raw")
    from_files = unionize_projection(tmp_path, space100)
    in_memory = unionize_projection(projection_grids, space100)
    pd.testing.assert_frame_equal(from_files, in_memory)
    (tmp_path / "sum_pixels_100.nrrd").unlink()
    with pytest.raises(FormatError, match="sum_pixels"):
        unionize_projection(tmp_path, space100)
    assert "projection_density" in GridFolder(tmp_path)


@pytest.mark.parametrize(
    "name, rtol, atol",
    [
        ("unionizes_112672974_partial.csv", 1e-6, 1e-12),  # full precision
        ("unionizes_visp_wt_2018.csv", 1e-5, 1e-6),  # printed with 6 decimals
    ],
)
def test_real_allen_rows_satisfy_the_formulas(shared_data, name, rtol, atol):
    rows = pd.read_csv(shared_data(f"connectivity/{name}"), index_col=0)
    pixel_mm3 = 0.35 * 0.35 * 10 * 1e-9
    close = dict(rtol=rtol, atol=atol)
    np.testing.assert_allclose(rows.volume, rows.sum_pixels * pixel_mm3, **close)
    np.testing.assert_allclose(rows.projection_volume, rows.sum_projection_pixels * pixel_mm3, **close)
    np.testing.assert_allclose(rows.projection_density, rows.sum_projection_pixels / rows.sum_pixels, **close)
    np.testing.assert_allclose(rows.projection_energy, rows.sum_projection_pixel_intensity / rows.sum_pixels, **close)
    signal = rows.sum_projection_pixels > 0
    np.testing.assert_allclose(
        rows.projection_intensity[signal],
        rows.sum_projection_pixel_intensity[signal] / rows.sum_projection_pixels[signal],
        rtol=max(rtol, 1e-5),
    )
    one = rows[rows.experiment_id == 112672974]
    if len(one):
        injection_volume = 0.3993495296  # mm3, the experiments table
        np.testing.assert_allclose(one.normalized_projection_volume, one.projection_volume / injection_volume, **close)
    # Hemisphere 3 rows are the sum of the 1 and 2 rows where all three are present.
    full = rows.pivot_table(index=["experiment_id", "structure_id", "is_injection"], columns="hemisphere_id",
                            values="sum_pixels").dropna()
    if len(full):
        np.testing.assert_allclose(full[3], full[1] + full[2], rtol=1e-5)


def test_expression_unionize_matches_brute_force(space100, tree):
    rng = np.random.default_rng(3)
    shape = space100.shape
    sum_pixels = rng.uniform(100, 1000, shape)
    expressing = sum_pixels * rng.random(shape) ** 3
    intensity = expressing * rng.uniform(50, 200, shape)
    all_intensity = intensity + (sum_pixels - expressing) * rng.uniform(5, 20, shape)
    energy = intensity / sum_pixels
    no_data = rng.random(shape) < 0.1
    energy[no_data] = -1
    sum_pixels[no_data] = 0
    grids = {"sum_pixels": sum_pixels, "sum_expressing_pixels": expressing, "sum_pixel_intensity": all_intensity,
             "sum_expressing_pixel_intensity": intensity, "energy": energy}
    allen = unionize_expression(grids, space100, section_data_set_id=7)
    # Allen's StructureUnionize: exactly its columns, one row per structure.
    assert list(allen.columns) == ISH_UNIONIZE_COLUMNS
    assert allen.structure_id.is_unique
    allen = allen.set_index("structure_id")
    by_hemisphere = unionize_expression_by_hemisphere(grids, space100, section_data_set_id=7)
    assert list(by_hemisphere.columns) == ISH_HEMISPHERE_COLUMNS
    by_hemisphere = by_hemisphere.set_index(["structure_id", "hemisphere_id"])
    mid = shape[2] // 2
    for sid in [997, 315, 549, 385] + rng.choice(tree.summary_structure_ids(), 15, replace=False).tolist():
        for hemisphere in (1, 2, 3):
            mask = np.isin(space100.annotation, tree.descendant_ids([sid])[0]) & ~no_data
            if hemisphere == 1:
                mask[:, :, mid:] = False
            if hemisphere == 2:
                mask[:, :, :mid] = False
            if not mask.any():
                assert (sid, hemisphere) not in by_hemisphere.index
                assert hemisphere != 3 or sid not in allen.index
                continue
            rows = [by_hemisphere.loc[(sid, hemisphere)]] + ([allen.loc[sid]] if hemisphere == 3 else [])
            for row in rows:
                assert row.sum_pixels == pytest.approx(sum_pixels[mask].sum())
                assert row.sum_pixel_intensity == pytest.approx(all_intensity[mask].sum())
                assert row.expression_density == pytest.approx(expressing[mask].sum() / sum_pixels[mask].sum())
                assert row.expression_energy == pytest.approx(intensity[mask].sum() / sum_pixels[mask].sum())
                assert row.voxel_energy_mean == pytest.approx(energy[mask].mean())
                assert row.voxel_energy_cv == pytest.approx(energy[mask].std() / energy[mask].mean(), rel=1e-6)
                assert row.section_data_set_id == 7


def test_cli_unionize_writes_the_rows(tmp_path, space100, projection_grids, capsys):
    from brainmap.cli import main

    for name, volume in projection_grids.items():
        write_nrrd(tmp_path / f"{name}_100.nrrd", volume, spacing_um=100)
    assert main(["unionize", str(tmp_path), "--experiment-id", "9"]) == 0
    written = pd.read_csv(tmp_path / "structure_unionizes.csv")
    expected = unionize_projection(projection_grids, space100, experiment_id=9)
    assert len(written) == len(expected) and (written.experiment_id == 9).all()
    np.testing.assert_allclose(written.sum_projection_pixels, expected.sum_projection_pixels, rtol=1e-12)
    assert main(["unionize", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_unionizes_ish_grids_at_200_um(tmp_path, capsys):
    """`brainmap unionize --product ish` on 200 um expression grids (as the runner writes them) uses Allen's 200 um
    expression grid annotation and writes the rows of :func:`unionize_expression` on it."""
    from brainmap.atlas.expression_grid import EXPRESSION_GRID_SHAPE, expression_grid_space
    from brainmap.cli import main
    from brainmap.pipeline.unionize import unionize_expression
    from brainmap.pipeline.unionize.ish import ISH_GRID_NAMES

    rng = np.random.default_rng(200)
    sum_pixels = rng.integers(0, 5000, EXPRESSION_GRID_SHAPE).astype(np.float32)
    expressing = np.floor(sum_pixels * rng.random(EXPRESSION_GRID_SHAPE)).astype(np.float32)
    intensity = sum_pixels * rng.uniform(50, 200, EXPRESSION_GRID_SHAPE).astype(np.float32)
    expressing_intensity = expressing * rng.uniform(100, 250, EXPRESSION_GRID_SHAPE).astype(np.float32)
    energy = np.where(sum_pixels > 0, expressing_intensity / np.maximum(sum_pixels, 1), -1).astype(np.float32)
    grids = dict(zip(ISH_GRID_NAMES, [sum_pixels, expressing, intensity, expressing_intensity, energy]))
    for name, volume in grids.items():
        write_nrrd(tmp_path / f"{name}_200.nrrd", volume, spacing_um=200)
    assert main(["unionize", str(tmp_path), "--product", "ish", "--experiment-id", "5"]) == 0
    assert "200 um ISH expression grid" in capsys.readouterr().err
    written = pd.read_csv(tmp_path / "structure_unionizes.csv")
    expected = unionize_expression(grids, expression_grid_space(), section_data_set_id=5)
    assert len(written) == len(expected) > 500
    assert list(written.structure_id) == list(expected.structure_id)
    np.testing.assert_allclose(written.expression_energy, expected.expression_energy, rtol=1e-12)
    np.testing.assert_allclose(written.sum_pixels, expected.sum_pixels, rtol=1e-12)
