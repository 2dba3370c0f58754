"""Detection + gridding on a Dask cluster: wall-clock throughput with one and with two worker processes.

The runner's detect + grid phase (one task per section: read the section's TIFFs, detect, grid; partial grids
summed as they arrive) over a whole virtual connectivity specimen (5 um pixels, ~130 sections, true alignment
written into the data set so no alignment runs), on a local cluster of 1 and then 2 single-threaded worker
processes. Target (issue 4): report the scaling; on this 2-core machine the ideal is 2x, and the target set here
is >= 1.6x (the client process sums partial grids and Dask moves them, on the same two cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.report import Figure
from brainmap.pipeline.grid import Gridder
from brainmap.pipeline.run.runner import dask_client, grid_sections
from brainmap.specimen.folder import read_dataset
from brainmap.specimen.synthetic import make_specimen

EXPERIMENT = 112672974
PIXEL_UM = 5.0
GRID_UM = 100


def _detect_and_grid(folder: Path, workers: int) -> tuple[float, float]:
    """(seconds, megapixels) of the runner's detect + grid phase of one data set on ``workers`` local worker
    processes (cluster start-up not timed)."""
    gridder = Gridder.for_dataset(read_dataset(folder), GRID_UM)
    megapixels = sum(im.width * im.height for im in gridder.usable_images()) / 1e6
    with dask_client(None, workers) as client:
        client.run(lambda: None)  # workers up
        started = time.perf_counter()
        accumulator = grid_sections(client, {folder: gridder}, progress=False)[folder]
        gridder.volumes(accumulator)
        return time.perf_counter() - started, megapixels


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="brainmap-scaling-") as tmp:
        folder = Path(tmp) / "specimen"
        make_specimen("connectivity", folder, experiment_id=EXPERIMENT, pixel_size_um=PIXEL_UM, alignment="all",
                      progress=False)
        _detect_and_grid(folder, 1)  # warm the page cache and the workers' imports
        one, megapixels = _detect_and_grid(folder, 1)
        two, _ = _detect_and_grid(folder, 2)
    return [
        Figure("detect + grid, 1 Dask worker (wall clock)", megapixels / one, None, "MP/s", better="higher",
               note=f"{megapixels:.0f} MP in {one:.1f} s"),
        Figure("detect + grid, 2 Dask workers (wall clock)", megapixels / two, None, "MP/s", better="higher",
               note=f"{megapixels:.0f} MP in {two:.1f} s"),
        Figure("scaling from 1 to 2 workers", one / two, 1.6, "x", better="higher", note="2 cores; ideal 2x"),
    ]
