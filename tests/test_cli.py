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


def _appears_in(figure: np.ndarray, picture: np.ndarray) -> bool:
    """Whether ``picture`` occurs unchanged somewhere in ``figure``."""
    rows, cols = picture.shape[:2]
    for r, c in np.argwhere(np.all(figure == picture[0, 0], axis=-1)):
        if np.array_equal(figure[r:r + rows, c:c + cols], picture):
            return True
    return False


def test_demo_writes_slices_and_summary(tmp_path, capsys, space100):
    assert main(["demo", "--out", str(tmp_path), "--resolution", "100", "--atlas-only"]) == 0
    printed = capsys.readouterr().out
    assert "1327 structures" in printed and "Isocortex" in printed
    coronal = np.asarray(Image.open(tmp_path / "annotation_coronal.png").convert("RGB"))
    sagittal = np.asarray(Image.open(tmp_path / "annotation_sagittal.png").convert("RGB"))
    # Figures: the slice itself, unchanged, inside a larger picture with a title, labels and a scale bar.
    assert coronal.shape[0] > 80 and coronal.shape[1] > 114 and sagittal.shape[1] > 132
    assert _appears_in(coronal, space100.get_slice_image("coronal", 7000.0))
    assert _appears_in(sagittal, space100.get_slice_image("sagittal", 4000.0))
    assert len(np.unique(coronal.reshape(-1, 3), axis=0)) > 20  # many structures, many colours
    summary = (tmp_path / "major_divisions.csv").read_text().splitlines()
    assert summary[0].startswith("structure_id,acronym") and len(summary) == 14  # header, root, 12 divisions


def test_only_the_commands_own_process_spares_the_exit_collections():
    """Run as the process's command (no argv) the objects are frozen for the exit; called with argv (as the
    tests do, going on afterwards) nothing is frozen."""
    import gc

    before = gc.get_freeze_count()
    assert main(["info"]) == 0
    assert gc.get_freeze_count() == before
    probe = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
             "sys.argv = ['brainmap', 'info']; from brainmap.cli import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("frozen True")


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


def test_structure_lookup_by_words_of_a_name(capsys):
    assert main(["atlas", "structure", "primary visual", "--resolution", "100"]) == 0
    assert capsys.readouterr().out.startswith("VISp  Primary visual area  (id 385)")
    assert main(["atlas", "structure", "hippocampal", "--resolution", "100"]) == 2
    assert "HPF (Hippocampal formation)" in capsys.readouterr().err


def test_clear_errors_name_what_is_wrong(tmp_path, capsys):
    assert main(["atlas", "slice", "--position", "5000", "--resolution", "100",
                 "--out", str(tmp_path / "missing" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'missing'} does not exist" in err and ".tmp" not in err
    assert main(["specimen", "make", "--product", "connectivity", "--experiment", "112672974", "--plane",
                 "sagittal", "--out", str(tmp_path / "s")]) == 2
    assert "sagittal is for ISH" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(["search", "differential", "--structures1", "TH", "--structures2", "Isocortex",
                 "--data-dir", str(tmp_path / "nothing")]) == 2
    assert "brainmap load" in capsys.readouterr().err


def test_every_option_has_help():
    from brainmap.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
            elif action.option_strings and action.help is None:
                yield " ".join(path + [action.option_strings[-1]])

    assert list(walk(build_parser(), ["brainmap"])) == []


def test_help_lists_the_commands_without_loading_the_search_services():
    code = ("import sys\nfrom brainmap.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED' if any(m.startswith(('brainmap.server.routes', 'brainmap.search', 'fastapi', 'sqlalchemy', "
            "'numba')) for m in sys.modules) else 'NOT LOADED')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "search    search services on a data directory" in out and "unionize" in out
    assert out.strip().endswith("NOT LOADED"), out[-300:]
    # a search command still gets its service's options
    code = code.replace("['--help']", "['search', 'differential', '--help']")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--structures1" in out and out.strip().endswith("LOADED") and "NOT LOADED" not in out
