"""The demo's alignment alone: each of a demo folder's data sets aligned with the demo's settings, one after
another in this process; prints its CPU seconds, a hash of the transforms found and their error against the
specimen's truth (the constant offset of the 100 um truth taken out too: ``docs/performance-demo.md``, round 4).

    python -m benchmarks.demo_alignment DEMO/specimens [SCRATCH]

A check for changes meant to leave the alignment as it was (the hashes must not move) and a measure of those that
do not (the error). The folders are copied to SCRATCH (default: a temporary folder) without their ``pipeline/``;
run it with one BLAS thread (``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``), as in a Dask worker.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brainmap.demo import DEMO_SETTINGS
from brainmap.pipeline.align.accuracy import alignment_error, reference_points, tissue_pixels
from brainmap.pipeline.align.align import reference_template
from brainmap.pipeline.align.reconstruct import choose_channel, read_alignment_image
from brainmap.pipeline.run.runner import align_stage
from brainmap.specimen.folder import read_dataset
from brainmap.specimen.synthetic.make import read_truth


def transforms_hash(folder: Path) -> str:
    """16 hex digits of a hash of every image's Alignment2d and the Alignment3d in ``folder``'s dataset.json."""
    dataset = read_dataset(folder, check_files=False)
    digest = hashlib.sha256()
    for image in dataset.sorted_images():
        digest.update(str(image.id).encode())
        digest.update(image.alignment2d.tsv.matrix.tobytes() + image.alignment2d.tsv.translation.tobytes())
    digest.update(dataset.alignment3d.tvr.matrix.tobytes() + dataset.alignment3d.tvr.translation.tobytes())
    return digest.hexdigest()[:16]


def centred_error(folder: Path, points_per_section: int = 200) -> tuple[float, float]:
    """Median and 95th percentile (um) of the error without its mean (the constant offset)."""
    dataset, truth = read_dataset(folder), read_truth(folder)
    channel = choose_channel(dataset)
    rng = np.random.default_rng(0)
    differences = []
    for image in dataset.sorted_images():
        if image.failed or image.id not in truth.alignment2d:
            continue
        xy = tissue_pixels(read_alignment_image(folder, image, channel), dataset.pixel_size_um, points_per_section,
                           rng)
        if xy.shape[0]:
            differences.append(reference_points(dataset, image.section_number, xy, image.alignment2d,
                                                dataset.alignment3d)
                               - reference_points(dataset, image.section_number, xy, truth.alignment2d[image.id],
                                                  truth.alignment3d))
    d = np.concatenate(differences)
    error = np.linalg.norm(d - d.mean(axis=0), axis=1)
    return float(np.median(error)), float(np.percentile(error, 95))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    scratch = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="brainmap-demo-align-"))
    names = sorted(p.name for p in source.iterdir() if (p / "dataset.json").exists())
    started = time.process_time()
    reference_template(DEMO_SETTINGS.reference_resolution_um)
    print(f"reference template: {time.process_time() - started:.2f} s CPU")
    total, figures = 0.0, []
    for name in names:
        folder = scratch / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source / name, folder, ignore=shutil.ignore_patterns("pipeline"))
        started = time.process_time()
        align_stage(folder, DEMO_SETTINGS)
        seconds = time.process_time() - started
        total += seconds
        dataset, truth = read_dataset(folder), read_truth(folder)
        stats = alignment_error(folder, dataset, {i.id: i.alignment2d for i in dataset.images}, dataset.alignment3d,
                                truth.alignment2d, truth.alignment3d)
        centred = centred_error(folder)
        figures.append((stats.median_um, stats.p95_um) + centred)
        print(f"{name}: {seconds:.2f} s CPU; transforms {transforms_hash(folder)}; error {stats.median_um:.2f} / "
              f"{stats.p95_um:.2f} um (median / p95), without the mean offset {centred[0]:.2f} / {centred[1]:.2f} um",
              flush=True)
    mean = np.mean(figures, axis=0)
    print(f"all: {total:.2f} s CPU; mean error {mean[0]:.2f} / {mean[1]:.2f} um, without the offset {mean[2]:.2f} / "
          f"{mean[3]:.2f} um")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
