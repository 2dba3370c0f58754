"""Alignment of full-size virtual specimens to the 25 um reference: accuracy against the truth and wall time.

Targets (alignment issue, this 2-core machine): over tissue points of every usable section, the distance between
where the TRUE and the ESTIMATED transforms put a pixel in the reference is at most 50 um (median) and 100 um
(95th percentile), and aligning one data set takes at most 60 s. Three data sets from the virtual microscope at
its default pixel sizes (10 um connectivity, 8 um ISH), damage on (missing and failed sections, tears, bubbles):

* connectivity, coronal, experiment 112672974 (~130 sections of 100 um);
* ISH coronal (Pvalb, ~60 sections every 200 um);
* ISH sagittal (Pvalb, ~20-25 sections every 200 um over the left hemisphere).

The specimens are made once and kept in ``$BRAINMAP_BENCH_DIR`` (default: ``<tmp>/brainmap-bench-align``);
making them (minutes) is not timed. The reference template (``make_template`` at 25 um, made once per process
and shared by the three alignments) is timed on its own. The alignment time is ``align_sections`` (reading the
images included, writing ``dataset.json`` excluded: that is milliseconds); its note gives the process CPU time
and the load average, since other work on the machine stretches the wall time.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import Figure
from brainmap.pipeline.align import AlignSettings, align_sections, alignment_error, reference_template
from brainmap.specimen import read_dataset
from brainmap.specimen.synthetic import make_specimen, read_truth

SEED = 2024
CASES = [
    ("connectivity coronal", "connectivity", {"experiment_id": 112672974}),
    ("ISH coronal", "ish", {"gene": "Pvalb", "plane": "coronal"}),
    ("ISH sagittal", "ish", {"gene": "Pvalb", "plane": "sagittal"}),
]


def _bench_dir() -> Path:
    return Path(os.environ.get("BRAINMAP_BENCH_DIR", Path(tempfile.gettempdir()) / "brainmap-bench-align"))


def specimen(name: str, product: str, kwargs: dict) -> Path:
    """The benchmark specimen's folder, made if it is not there yet (or was made with other parameters)."""
    folder = _bench_dir() / name.replace(" ", "_")
    if (folder / "dataset.json").exists():
        metadata = read_dataset(folder, check_files=False).metadata
        if metadata.get("seed") == SEED and (folder / "truth" / "transforms.json").exists():
            return folder
    print(f"  (making the {name} specimen in {folder}; not timed)", flush=True)
    make_specimen(product, folder, seed=SEED, truth_resolution_um=25, damage=True, progress=False,
                  overwrite=True, **kwargs)
    return folder


def run() -> list[Figure]:
    folders = [(name, specimen(name, product, kwargs)) for name, product, kwargs in CASES]
    started = time.perf_counter()
    template = reference_template(25)
    figures = [Figure("reference template, 25 um (once per process)", time.perf_counter() - started, None, "s")]
    settings = AlignSettings(reference_resolution_um=25)
    for name, folder in folders:
        dataset = read_dataset(folder)
        truth = read_truth(folder)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = align_sections(folder, dataset, settings, template=template)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        error = alignment_error(folder, dataset, result.alignment2d, result.alignment3d, truth.alignment2d,
                                truth.alignment3d)
        failed = sum(image.failed for image in dataset.images)
        missing = len(truth.info.get("missing_section_numbers", []))
        figures += [
            Figure(f"{name}: align time", seconds, 60.0, "s",
                   note=f"{len(dataset.images)} sections of {dataset.images[0].width}x{dataset.images[0].height} px "
                        f"at {dataset.pixel_size_um:g} um; {failed} failed, {missing} missing; CPU {cpu:.0f} s, "
                        f"load average {os.getloadavg()[0]:.1f}"),
            Figure(f"{name}: median error", error.median_um, 50.0, "um",
                   note=f"{error.errors_um.size} points on {error.n_sections} usable sections"),
            Figure(f"{name}: 95th percentile error", error.p95_um, 100.0, "um"),
            Figure(f"{name}: max error", error.max_um, None, "um",
                   note=f"doubtful sections: {len(result.doubtful)}"),
            Figure(f"{name}: median out-of-plane error", float(np.median(error.normal_errors_um)), None, "um"),
        ]
    return figures
