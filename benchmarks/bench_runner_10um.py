"""The runner's grid + unionize of one connectivity data set at 10 um (bounded memory), beside 25 um.

The demo's first connectivity experiment (112672974: 124 coronal sections of 50 um pixels, made once by the
virtual microscope with its true transforms and cached) goes through ``run_pipeline`` in a new process with two
Dask workers, as ``brainmap run --grid-resolution R --keep-alignment`` runs it: detection, the grid stage (at
10 um the partial grids are spilled to compressed files under ``pipeline/`` and summed one block of LR planes at a
time, :mod:`brainmap.pipeline.grid.spill`), the nine NRRD volumes written slab by slab, and the unionize stage
(at 10 um the bundled 25 um annotation upsampled slab by slab). Figures: wall time and peak RSS of the process
and all its children (psutil, sampled every 0.1 s), at 10 um and at 25 um (the dense path). Target (issue 18):
the 10 um peak at most 2 GB above the 25 um one; no target for the time. The specimen cache:
``$BRAINMAP_BENCH_CACHE`` or ``~/.cache/brainmap/bench``.

Measured 2026-12-05 on a machine shared with other jobs (load average ~13 on 2 cores): 10 um peak 2.56 GB, 25 um
4.61 GB (the dense 25 um accumulator in the main process); 10 um 292 s (grid stage 227 s, unionize 65 s), 25 um
77 s; an earlier, less loaded run: 10 um 209 s (grid stage 154 s, unionize 55 s), 25 um 56 s.
Quiet, after a 50 um pixel's footprint was shared over every 10 um voxel under it (2026-12-05 22:30, the lead):
10 um 4.24 GB / 191 s (grid stage 159 s), 25 um 4.51 GB / 25 s; the whole brain's projection volume 10/25 um
0.9986 (1.0858 with the footprint capped at half a voxel, which left voxels between the pixels' centres empty).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from benchmarks.grid_files import cache_dir
from benchmarks.report import Figure

EXPERIMENT = 112672974  # the demo's first (brainmap.demo.DEMO_EXPERIMENTS)

_RUN = """
import sys
from brainmap.pipeline.run import RunSettings, run_pipeline
runs = run_pipeline([sys.argv[1]], RunSettings(grid_resolution_um=int(sys.argv[2]), keep_alignment=True),
                    workers=2, progress=False)
assert runs[0].stages["grid"] == "done" and runs[0].stages["unionize"] == "done", runs[0].stages
"""


def specimen() -> Path:
    """The demo's first connectivity specimen (true transforms in dataset.json), made once."""
    target = cache_dir() / f"specimen_connectivity_{EXPERIMENT}"
    if not (target / "dataset.json").exists():
        from brainmap.demo import DEMO_PIXEL_SIZE_UM
        from brainmap.specimen.synthetic import make_specimen

        make_specimen("connectivity", target, experiment_id=EXPERIMENT,
                      pixel_size_um=DEMO_PIXEL_SIZE_UM["connectivity"], truth_resolution_um=100, alignment="all",
                      overwrite=True, progress=False)
    return target


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure_run(folder: Path, resolution_um: int) -> tuple[float, float, float, int]:
    """(wall seconds, seconds until the grid stage's record appeared (align, detect, grid, files written), peak
    RSS GB of the process tree, bytes of the grid files) of one run in a new process."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _RUN, str(folder), str(resolution_um)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak, gridded = 0, None
    done = threading.Event()
    record = folder / "pipeline" / "grid.record.json"

    def sample() -> None:
        nonlocal peak, gridded
        while not done.is_set():
            try:
                peak = max(peak, _tree_rss(process))
            except psutil.NoSuchProcess:
                return
            if gridded is None and record.exists():
                gridded = time.perf_counter() - started
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = child.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if child.returncode != 0:
        killed = f" (killed by signal {-child.returncode}: out of memory?)" if child.returncode < 0 else ""
        raise RuntimeError(f"the {resolution_um} um run failed{killed}, status {child.returncode}:\n{stderr[-3000:]}")
    grid_bytes = sum(p.stat().st_size for p in (folder / "pipeline" / "grids").glob("*.nrrd"))
    return seconds, gridded or seconds, peak / 1e9, grid_bytes


def run() -> list[Figure]:
    source = specimen()
    figures, tables = {}, {}
    with tempfile.TemporaryDirectory(prefix="brainmap-runner-10um-") as tmp:
        for resolution in (25, 10):  # one at a time: never two large jobs at once
            folder = Path(tmp) / f"conn_{resolution}"
            shutil.copytree(source, folder)
            figures[resolution] = measure_run(folder, resolution)
            tables[resolution] = pd.read_csv(folder / "pipeline" / "structure_unionizes.csv")
            leftovers = list((folder / "pipeline").glob("grid-spill-*"))
            if leftovers:
                raise RuntimeError(f"spill folders left behind: {leftovers}")
            shutil.rmtree(folder)
    (t25, g25, m25, b25), (t10, g10, m10, b10) = figures[25], figures[10]
    agreement = _agreement(tables[10], tables[25])
    return [
        Figure("runner, 10 um grid + unionize: peak RSS above 25 um's", m10 - m25, 2.0, "GB",
               note=f"10 um {m10:.2f} GB, 25 um {m25:.2f} GB; process tree incl. 2 Dask workers"),
        Figure("runner, 10 um grid + unionize: wall time", t10, None, "s",
               note=f"grid stage done at {g10:.0f} s (124 sections; 9 volumes, {b10 / 1e9:.2f} GB gzip NRRD), "
                    f"unionize {t10 - g10:.0f} s"),
        Figure("runner, 25 um grid + unionize: wall time (dense path)", t25, None, "s",
               note=f"grid stage done at {g25:.0f} s ({b25 / 1e6:.0f} MB gzip NRRD), unionize {t25 - g25:.0f} s"),
        Figure("runner, 25 um grid + unionize: peak RSS", m25, None, "GB"),
        Figure("10 um vs 25 um unionize: correlation of projection volumes", agreement[0], None, "",
               note=f"{agreement[1]} structure x hemisphere records; whole brain's projection volume 10/25 um: "
                    f"{agreement[2]:.4f}"),
    ]


def _agreement(fine: pd.DataFrame, coarse: pd.DataFrame) -> tuple[float, int, float]:
    """(Pearson correlation of the non-injection records' projection_volume where either is non-zero, their
    number, the ratio of the whole brain's (997, both hemispheres) projection_volume): the two grids sample the
    same sections, so their volumes should agree closely."""
    key = ["structure_id", "hemisphere_id", "is_injection"]
    both = fine.merge(coarse, on=key, suffixes=("_10", "_25"))
    both = both[~both.is_injection & ((both.projection_volume_10 > 0) | (both.projection_volume_25 > 0))]
    root = both[(both.structure_id == 997) & (both.hemisphere_id == 3)].iloc[0]
    r = float(np.corrcoef(both.projection_volume_10, both.projection_volume_25)[0, 1])
    return r, len(both), float(root.projection_volume_10 / root.projection_volume_25)
