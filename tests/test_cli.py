"""The brainmap command: demo, info and the atlas sub-commands, in-process and through the installed script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from brainmap.cli import main
from brainmap.io.nrrd import read_nrrd


def test_demo_writes_slices_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--resolution", "100", "--atlas-only"]) == 0
    printed = capsys.readouterr().out
    assert "1327 structures" in printed and "Isocortex" in printed
    coronal = np.asarray(Image.open(tmp_path / "annotation_coronal.png"))
    sagittal = np.asarray(Image.open(tmp_path / "annotation_sagittal.png"))
    assert coronal.shape == (80, 114, 3) and sagittal.shape == (80, 132, 3)
    assert len(np.unique(coronal.reshape(-1, 3), axis=0)) > 20  # many structures, many colours
    summary = (tmp_path / "major_divisions.csv").read_text().splitlines()
    assert summary[0].startswith("structure_id,acronym") and len(summary) == 14  # header, root, 12 divisions


def test_info_lists_bundled_files(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "annotation_25.nrrd" in printed and "c620cbcc562183e4" in printed and "1327 structures" in printed


@pytest.mark.parametrize("query", ["VISp", "385", "Primary visual area"])
def test_structure_lookup_by_id_acronym_or_name(query, capsys):
    assert main(["atlas", "structure", query, "--resolution", "100"]) == 0
    printed = capsys.readouterr().out
    assert "VISp  Primary visual area  (id 385)" in printed
    assert "root > grey > CH > CTX > CTXpl > Isocortex > VIS > VISp" in printed
    assert "Brain – Summary Structures (167587189)" in printed
    assert "7,113 with descendants" in printed  # voxels at 100 um, checked against np.isin in the atlas tests


def test_unknown_structure_is_a_clear_error(capsys):
    assert main(["atlas", "structure", "VISpX", "--resolution", "100"]) == 2
    error = capsys.readouterr().err
    assert "VISpX" in error and "did you mean" in error


def test_slice_and_mask_exports(tmp_path, space100, tree):
    png = tmp_path / "slice.png"
    assert main(["atlas", "slice", "--plane", "sagittal", "--position", "3000", "--out", str(png), "--resolution", "100"]) == 0
    assert np.asarray(Image.open(png)).shape == (80, 132, 3)
    out = tmp_path / "hpf.nrrd"
    assert main(["atlas", "mask", "HPF", "315", "--out", str(out), "--resolution", "100"]) == 0
    mask, header = read_nrrd(out)
    assert mask.dtype == np.uint8 and header["space"] == "left-posterior-superior"
    expected = np.isin(space100.annotation, tree.descendant_ids([1089])[0] + tree.descendant_ids([315])[0])
    np.testing.assert_array_equal(mask.astype(bool), expected)
    np.testing.assert_allclose(np.diag(header["space directions"]), [100, 100, 100])


def test_position_outside_the_volume_is_a_clear_error(tmp_path, capsys):
    assert main(["atlas", "slice", "--position", "99999", "--out", str(tmp_path / "x.png"), "--resolution", "100"]) == 2
    assert "outside the volume" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_installed_entry_point_runs():
    exe = shutil.which("brainmap") or str(__import__("pathlib").Path(sys.executable).with_name("brainmap"))
    result = subprocess.run([exe, "atlas", "structure", "CA1", "--resolution", "100"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Field CA1" in result.stdout
