"""The runner's grid stage through the bounded-memory accumulator (issue 18): the grids and unionize table of a
spilled run are those of the dense run, and a run killed while it spills is finished by the next one.

A 10 um run of a whole data set takes minutes (writing nine 1.2 G-voxel volumes, unionizing them): it is
``python -m benchmarks runner_10um``. Here the same code path runs at 100 um with the spill forced on (as for
grids above :data:`~brainmap.pipeline.grid.spill.SPILL_VOXELS`) and blocks of 5 LR planes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from brainmap.io import read_nrrd
from brainmap.pipeline.run import RunSettings, run_pipeline
from brainmap.pipeline.run.records import StageRecord
from brainmap.pipeline.run.runner import PIPELINE_DIR, UNIONIZE_FILE
from brainmap.specimen.synthetic import make_specimen

SETTINGS = RunSettings(grid_resolution_um=100, keep_alignment=True)
BLOCK_BYTES = 132 * 80 * 8 * 5  # 5 LR planes of the 100 um grid

#: Run the pipeline on one folder with the spill forced on (a new process: it is killed in the middle).
_SPILLED_RUN = f"""
import sys
import brainmap.pipeline.grid as grid
import brainmap.pipeline.grid.spill as spill
from brainmap.pipeline.run import RunSettings, run_pipeline
grid.SPILL_VOXELS, spill.BLOCK_BYTES = 0, {BLOCK_BYTES}
run_pipeline([sys.argv[1]], RunSettings(grid_resolution_um=100, keep_alignment=True), workers=2, progress=False)
"""


@pytest.fixture(scope="module")
def specimen(tmp_path_factory):
    """The demo's first connectivity experiment (50 um pixels, true transforms), cut down to 30 sections around
    its injection site (sections 80-109; the site is at AP 9350 um)."""
    folder = tmp_path_factory.mktemp("spill") / "conn"
    make_specimen("connectivity", folder, experiment_id=112672974, pixel_size_um=50, truth_resolution_um=100,
                  alignment="all", progress=False)
    doc = json.loads((folder / "dataset.json").read_text())
    doc["images"] = [image for image in doc["images"] if 80 <= image["section_number"] < 110]
    (folder / "dataset.json").write_text(json.dumps(doc))
    return folder


def _copy(specimen: Path, target: Path) -> Path:
    shutil.copytree(specimen, target)
    return target


def _grids(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: read_nrrd(path)[0] for path in sorted((folder / PIPELINE_DIR / "grids").glob("*.nrrd"))}


@pytest.fixture(scope="module")
def dense_run(specimen, tmp_path_factory):
    folder = _copy(specimen, tmp_path_factory.mktemp("dense") / "conn")
    runs = run_pipeline([folder], SETTINGS, workers=2, progress=False)
    assert runs[0].stages == {"align": "done", "grid": "done", "unionize": "done"}
    return folder


def test_a_spilled_run_killed_mid_grid_is_finished_by_the_next_with_the_dense_runs_files(specimen, dense_run,
                                                                                         tmp_path, monkeypatch,
                                                                                         same_bits, reaping_semaphores):
    folder = _copy(specimen, tmp_path / "conn")
    work = folder / PIPELINE_DIR
    with reaping_semaphores():
        process = subprocess.Popen([sys.executable, "-c", _SPILLED_RUN, str(folder)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while (not list(work.glob("grid-spill-*/*.spill")) and process.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            spilling = list(work.glob("grid-spill-*"))
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the runner and its Dask workers, no clean-up
            process.wait()
    assert spilling and StageRecord.read(work, "grid") is None, "the run was not caught while spilling"

    import brainmap.pipeline.grid as grid
    import brainmap.pipeline.grid.spill as spill

    monkeypatch.setattr(grid, "SPILL_VOXELS", 0)
    monkeypatch.setattr(spill, "BLOCK_BYTES", BLOCK_BYTES)
    runs = run_pipeline([folder], SETTINGS, workers=2, progress=False)
    assert runs[0].stages["grid"] == "done" and runs[0].stages["unionize"] == "done"
    assert not list(work.glob("grid-spill-*"))  # the crashed run's folder and this run's are gone
    # The same volumes, bit for bit, and the same unionize rows as the dense accumulator's run.
    dense, spilled = _grids(dense_run), _grids(folder)
    assert sorted(spilled) == sorted(dense) and len(dense) == 9
    for name, volume in dense.items():
        assert spilled[name].dtype == volume.dtype and same_bits(spilled[name], volume), name
    assert dense["projection_density_100.nrrd"].any() and dense["injection_fraction_100.nrrd"].any()
    assert (work / UNIONIZE_FILE).read_bytes() == (dense_run / PIPELINE_DIR / UNIONIZE_FILE).read_bytes()
    # Resumed: nothing to redo.
    again = run_pipeline([folder], SETTINGS, workers=2, progress=False)
    assert again[0].stages == {"align": "skipped", "grid": "skipped", "unionize": "skipped"}
