"""Alignment of virtual specimens the aligner has never seen the like of, and of real sections.

Targets (issue 13, this 2-core machine):

* **Virtual specimens with an unseen appearance and a non-linear warp** (:mod:`brainmap.specimen.synthetic.
  appearance`: per-tissue-class random contrasts, bias fields, structured noise; a smooth 100-300 um warp on top
  of the affine; folds), at the default pixel sizes (10 um connectivity, 8 um ISH), damage on: connectivity
  coronal as fluorescence (experiment 112672974, ~130 sections), ISH coronal as RGB brightfield (Pvalb), ISH
  sagittal as grey brightfield (Pvalb, one hemisphere). Over tissue points of every usable section, the distance
  between where the TRUE (affine + warp) and the ESTIMATED (affine + deformation) transforms put a pixel:
  median <= 50 um, 95th percentile <= 120 um, each. The tissue points are those the aligner's tissue detection
  finds on the images; beside them, the same measure over the generator's TRUE tissue
  (:func:`~brainmap.specimen.synthetic.tissue_truth.true_tissue_masks`: a section that cuts no brain has no
  point to place). Beside them, the same specimens with today's appearance (the "nissl" one, drawn from an
  annotation-derived template like the aligner's), no warp.
* **Real sections GLTa** (DeepSlice's example brain, 34 brightfield DAB sections, ``$BRAINMAP_GLTA``; skipped if
  absent): imported with ``brainmap specimen import`` and aligned with ``brainmap align``; outline Dice (the
  tissue against the CCF brain where the alignment puts it) median over sections >= 0.95, beside DeepSlice's on
  the same masks; median distance to DeepSlice's placement beside the spread between its two versions.
* **Time and memory** of ``brainmap align`` on the connectivity specimen (~130-140 sections) at the 25 um template
  with the non-linear stage: <= 60 s and <= 4 GB (the whole command, a child process: wall time and peak RSS).

The specimens are made once and kept in ``$BRAINMAP_BENCH_DIR`` (default ``<tmp>/brainmap-bench-align``);
making them (minutes) is not timed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.child import run_child
from benchmarks.report import Figure
from brainmap.pipeline.align import AlignSettings, align_sections, alignment_error, reference_template
from brainmap.specimen import read_dataset
from brainmap.specimen.synthetic import DamageRates, make_specimen, read_truth
from brainmap.specimen.synthetic.tissue_truth import true_tissue_masks

SEED = 2024
#: (name, product, kwargs, unseen appearance)
CASES = [
    ("connectivity coronal", "connectivity", {"experiment_id": 112672974}, "fluorescence"),
    ("ISH coronal", "ish", {"gene": "Pvalb", "plane": "coronal"}, "rgb"),
    ("ISH sagittal", "ish", {"gene": "Pvalb", "plane": "sagittal"}, "brightfield"),
]


def _bench_dir() -> Path:
    return Path(os.environ.get("BRAINMAP_BENCH_DIR", Path(tempfile.gettempdir()) / "brainmap-bench-align"))


def specimen(name: str, product: str, kwargs: dict, appearance: str, warp: bool) -> Path:
    """The benchmark specimen's folder, made if it is not there yet (or was made with other parameters)."""
    folder = _bench_dir() / f"{name.replace(' ', '_')}_{appearance}{'_warp' if warp else ''}"
    if (folder / "dataset.json").exists():
        metadata = read_dataset(folder, check_files=False).metadata
        if metadata.get("seed") == SEED and metadata.get("appearance", "nissl") == appearance \
                and (folder / "truth" / "transforms.json").exists():
            return folder
    print(f"  (making the {name} ({appearance}) specimen in {folder}; not timed)", flush=True)
    damage = DamageRates(fold=0.03) if warp else True
    make_specimen(product, folder, seed=SEED, truth_resolution_um=25, damage=damage, progress=False,
                  overwrite=True, appearance=appearance, warp=warp, **kwargs)
    return folder


def _accuracy(name: str, folder: Path, label: str, template) -> list[Figure]:
    dataset = read_dataset(folder)
    truth = read_truth(folder)
    started = time.perf_counter()
    result = align_sections(folder, dataset, AlignSettings(reference_resolution_um=25), template=template)
    seconds = time.perf_counter() - started
    error = alignment_error(folder, dataset, result.alignment2d, result.alignment3d, truth.alignment2d,
                            truth.alignment3d, true_deformation=truth.deformation,
                            estimated_deformation=result.deformation)
    unseen = label != "today's appearance"
    figures = [
        Figure(f"{name}, {label}: median error", error.median_um, 50.0 if unseen else None, "um",
               note=f"{error.errors_um.size} points, {error.n_sections} sections; {seconds:.0f} s in-process"),
        Figure(f"{name}, {label}: 95th percentile error", error.p95_um, 120.0 if unseen else None, "um",
               note=f"max {error.max_um:.0f} um; {len(result.doubtful)} doubtful"),
    ]
    if unseen:
        # the same measure over the generator's TRUE tissue instead of the tissue found on the images
        true = alignment_error(folder, dataset, result.alignment2d, result.alignment3d, truth.alignment2d,
                               truth.alignment3d, true_deformation=truth.deformation,
                               estimated_deformation=result.deformation, tissue_masks=true_tissue_masks(folder))
        figures += [
            Figure(f"{name}, {label}: median error over the true tissue", true.median_um, 50.0, "um",
                   note=f"{true.errors_um.size} points, {true.n_sections} sections"),
            Figure(f"{name}, {label}: 95th percentile error over the true tissue", true.p95_um, 120.0, "um",
                   note=f"max {true.max_um:.0f} um"),
        ]
    return figures


#: CPU seconds (user + system) of the last :func:`_peak_command`: on a shared machine, closer to the quiet wall time.
_LAST_CPU_S = [float("nan")]


def _peak_command(args: list[str]) -> tuple[float, float, int]:
    """Wall time (s), peak RSS (GB) and exit code of a child process (its CPU time in ``_LAST_CPU_S``)."""
    run = run_child(args)
    _LAST_CPU_S[0] = run.cpu_s
    return run.wall_s, run.peak_gb, run.exit_code


def _glta() -> list[Figure]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.glta import GLTA, brainmap_mapper, evaluate
    from brainmap.specimen.importer import import_sections

    files = sorted(GLTA.glob("641_2002_2568_NM01_s*.png")) if GLTA.is_dir() else []
    if not files:
        print(f"  (GLTa skipped: no sections at {GLTA}; set BRAINMAP_GLTA)")
        return []
    folder = _bench_dir() / "glta"
    import_sections(files, folder, pixel_size_um=12.5, section_thickness_um=50.0, plane="coronal", product="ish",
                    overwrite=True)
    brainmap = shutil.which("brainmap") or str(Path(sys.executable).with_name("brainmap"))
    seconds, peak, code = _peak_command([brainmap, "align", str(folder), "--reference-resolution", "25"])
    if code != 0:
        raise RuntimeError(f"brainmap align {folder} failed ({code})")
    r = evaluate(folder, brainmap_mapper(folder))
    return [
        Figure("GLTa (real, 34 sections): outline Dice, median", r["median dice"], 0.95, "", better="higher",
               note=f"DeepSlice on the same masks: {r['median dice MyResults.json']:.3f} (MyResults.json), "
                    f"{r['median dice GLTa.json']:.3f} (GLTa.json); align {seconds:.0f} s, {peak:.2f} GB"),
        Figure("GLTa: median distance to DeepSlice (MyResults.json)", r["median distance MyResults.json"], None,
               "um", note=f"to GLTa.json {r['median distance GLTa.json']:.0f} um; DeepSlice's two versions "
                          f"differ by {r['median deepslice spread']:.0f} um (median)"),
    ]


def run() -> list[Figure]:
    started = time.perf_counter()
    template = reference_template(25)
    figures = [Figure("reference template, 25 um (once per process)", time.perf_counter() - started, None, "s")]
    figures += _glta()
    for name, product, kwargs, appearance in CASES:
        unseen = specimen(name, product, kwargs, appearance, warp=True)
        figures += _accuracy(name, unseen, f"unseen {appearance} + warp", template)
        today = specimen(name, product, kwargs, "nissl", warp=False)
        figures += _accuracy(name, today, "today's appearance", template)
        if product == "connectivity":
            work = _bench_dir() / "timing"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(unseen, work, ignore=shutil.ignore_patterns("truth"))
            brainmap = shutil.which("brainmap") or str(Path(sys.executable).with_name("brainmap"))
            seconds, peak, code = _peak_command([brainmap, "align", str(work), "--reference-resolution", "25"])
            n = len(read_dataset(work).images)
            figures += [
                Figure(f"brainmap align, {n} sections, 25 um, non-linear: time", seconds, 60.0, "s",
                       note=f"exit {code}; CPU {_LAST_CPU_S[0]:.0f} s; load average {os.getloadavg()[0]:.1f} "
                            "(shared machine)"),
                Figure(f"brainmap align, {n} sections, 25 um, non-linear: peak memory", peak, 4.0, "GB"),
            ]
    return figures
