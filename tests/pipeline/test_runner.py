"""The runner: a whole run on virtual specimens, skipping what is done, redoing what changed, surviving SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from brainmap.atlas.expression_grid import expression_grid_space
from brainmap.pipeline.run import RunSettings, run_pipeline
from brainmap.pipeline.run.records import StageRecord
from brainmap.pipeline.run import runner
from brainmap.pipeline.run.runner import PIPELINE_DIR, UNIONIZE_FILE, align_stage
from brainmap.pipeline.unionize import GridFolder, unionize_expression_by_hemisphere
from brainmap.specimen.synthetic import make_specimen

SETTINGS = RunSettings(grid_resolution_um=100, keep_alignment=True)


@pytest.fixture(scope="module")
def specimens(tmp_path_factory):
    """A connectivity and a sagittal ISH virtual specimen, coarse pixels, true transforms in dataset.json."""
    root = tmp_path_factory.mktemp("specimens")
    make_specimen("connectivity", root / "conn", experiment_id=112672974, pixel_size_um=50, truth_resolution_um=100,
                  alignment="all", progress=False)
    make_specimen("ish", root / "ish", gene="Pvalb", plane="sagittal", pixel_size_um=40, truth_resolution_um=100,
                  alignment="all", progress=False)
    return root


def _copy(specimens, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(specimens / name, target)
    return target


def _outputs(folder: Path) -> dict[str, str]:
    """Each output's checksum as its stage recorded it; a gzip NRRD's is that of its header and inflated data.

    ISA-L's deflate (the grid writer's) may pick other, equally valid matches for the same data from one process
    to the next (measured: a rerun's projection_energy_100.nrrd inflated to the same bytes but its stream differed
    from byte 26,650 on), so a grid is compared by what it holds.
    """
    work = folder / PIPELINE_DIR
    found = {}
    for stage in ("align", "grid", "unionize"):
        for name, meta in StageRecord.read(work, stage).outputs.items():
            found[name] = meta["sha256"]
            if name.endswith(".nrrd"):
                raw = (work / name).read_bytes()
                start = raw.index(b"\n\n") + 2
                found[name] = hashlib.sha256(raw[:start] + zlib.decompress(raw[start:], 31)).hexdigest()
    return found


@pytest.fixture(scope="module")
def completed(specimens, tmp_path_factory):
    """Both specimens run once through the whole pipeline (2 Dask worker processes), named by paths relative to
    the working directory as a user types them; the output checksums."""
    root = tmp_path_factory.mktemp("completed")
    conn, ish = _copy(specimens, root, "conn"), _copy(specimens, root, "ish")
    here = os.getcwd()
    os.chdir(root.parent)
    try:
        runs = run_pipeline([Path(root.name) / "conn", Path(root.name) / "ish"], SETTINGS, workers=2, progress=False)
    finally:
        os.chdir(here)
    return conn, ish, runs, {"conn": _outputs(conn), "ish": _outputs(ish)}


def test_run_writes_every_stage_then_skips_and_redoes_what_changed(completed):
    conn, ish, runs, _ = completed
    assert [r.stages for r in runs] == [{"align": "done", "grid": "done", "unionize": "done"}] * 2
    projection = pd.read_csv(conn / PIPELINE_DIR / UNIONIZE_FILE)
    expression = pd.read_csv(ish / PIPELINE_DIR / UNIONIZE_FILE)
    assert projection.is_injection.any() and (projection.experiment_id == 112672974).all()
    assert {"expression_energy", "voxel_energy_cv"} <= set(expression.columns)
    # Allen's StructureUnionize: one row per structure; sagittal ISH covers the left hemisphere only.
    assert "hemisphere_id" not in expression.columns and expression.structure_id.is_unique
    by_hemisphere = unionize_expression_by_hemisphere(GridFolder(ish / PIPELINE_DIR / "grids", resolution=200),
                                                      expression_grid_space())
    by_hemisphere = by_hemisphere.query("structure_id == 997").set_index("hemisphere_id").sum_pixels
    assert by_hemisphere.get(2, 0) < 0.05 * by_hemisphere[1]
    for name in ("projection_density_100.nrrd", "injection_fraction_100.nrrd", "data_mask_100.nrrd"):
        assert (conn / PIPELINE_DIR / "grids" / name).exists()
    # Every MetaImage keeps its data file, and the grid record vouches for both.
    grid_outputs = StageRecord.read(ish / PIPELINE_DIR, "grid").outputs
    for name in ("energy", "density", "intensity"):
        assert (ish / PIPELINE_DIR / "grids" / f"{name}.raw").stat().st_size > 0
        assert {f"grids/{name}.mhd", f"grids/{name}.raw"} <= set(grid_outputs)

    again = run_pipeline([conn, ish], SETTINGS, workers=1, progress=False)
    assert [r.stages for r in again] == [{"align": "skipped", "grid": "skipped", "unionize": "skipped"}] * 2

    # A changed parameter redoes its stage; what depends only on unchanged outputs is still skipped.
    other = RunSettings(grid_resolution_um=100, keep_alignment=True, reference_resolution_um=50)
    redone = run_pipeline([ish], other, workers=1, progress=False)
    assert redone[0].stages == {"align": "done", "grid": "skipped", "unionize": "skipped"}
    # An altered output is redone.
    (ish / PIPELINE_DIR / UNIONIZE_FILE).write_text("tampered\n")
    redone = run_pipeline([ish], other, workers=1, progress=False)
    assert redone[0].stages == {"align": "skipped", "grid": "skipped", "unionize": "done"}
    assert pd.read_csv(ish / PIPELINE_DIR / UNIONIZE_FILE).shape[0] > 100


def test_another_grid_resolution_grids_and_unionizes_again(completed, tmp_path):
    """A finished connectivity data set run at another grid resolution is gridded and unionized again (its
    alignment kept), and the other resolution's grid files go."""
    conn = tmp_path / "conn"
    shutil.copytree(completed[0], conn)
    coarser = RunSettings(grid_resolution_um=50, keep_alignment=True)
    (run,) = run_pipeline([conn], coarser, workers=1, progress=False)
    assert run.stages == {"align": "skipped", "grid": "done", "unionize": "done"}
    grids = conn / PIPELINE_DIR / "grids"
    assert (grids / "projection_density_50.nrrd").exists() and not (grids / "projection_density_100.nrrd").exists()
    assert StageRecord.read(conn / PIPELINE_DIR, "grid").summary["resolution_um"] == 50


def test_a_new_aligner_version_aligns_again(completed, monkeypatch):
    """A folder aligned by an earlier aligner (another ``ALIGN_FORMAT``) is aligned again, not taken as done."""
    _, ish, _, _ = completed
    kept = RunSettings(grid_resolution_um=100, keep_alignment=True, reference_resolution_um=50)
    align_stage(ish, kept)  # in this process, with the transforms already found (fast)
    assert align_stage(ish, kept) == "skipped"
    monkeypatch.setattr(runner, "ALIGN_FORMAT", runner.ALIGN_FORMAT + 1)
    assert align_stage(ish, kept) == "done"
    assert align_stage(ish, kept) == "skipped"


@pytest.mark.parametrize("keep_alignment", [False, True])
def test_a_section_the_aligner_finds_no_tissue_in_is_not_gridded(tmp_path, keep_alignment):
    """This draw's lateral-most sagittal section is bare glass (the virtual microscope drew no tissue in it).
    Detection alone takes a one-class image for a window inside the brain, all tissue: gridded, the slide's
    ~140 mm2 would count as tissue where the aligner placed it. The aligner finds it empty (when it aligns, and when
    the data set's own transforms are kept), the alignment record says so, and the grid stage leaves it out as it
    leaves out a failed section."""
    from brainmap.pipeline.run.layout import PipelineFolder
    from brainmap.specimen import read_dataset
    from brainmap.specimen.folder import read_section_image

    folder = tmp_path / "ish"
    make_specimen("ish", folder, gene="Pvalb", plane="sagittal", pixel_size_um=40, truth_resolution_um=100,
                  seed=1928254200, progress=False, alignment="all" if keep_alignment else "none")
    dataset = read_dataset(folder)
    usable = [i for i in dataset.sorted_images() if not i.failed]
    bare = [i.id for i in usable if np.percentile(read_section_image(folder, i, "tissue"), 99.9)
            < 2.0 * np.median(read_section_image(folder, i, "tissue"))]
    assert len(bare) == 1
    settings = RunSettings(grid_resolution_um=100, reference_resolution_um=50, keep_alignment=keep_alignment)
    (run,) = run_pipeline([folder], settings, workers=1, progress=False)
    assert run.stages["grid"] == "done"
    layout = PipelineFolder.of(folder)
    assert json.loads(layout.alignment.read_text())["without_tissue"] == bare
    assert StageRecord.read(layout.work, "grid").summary["sections"] == len(usable) - 1
    assert read_dataset(folder).image(bare[0]).alignment2d is not None  # placed by its neighbour, for display


def test_windows_inside_the_brain_are_not_called_empty(specimens, tmp_path):
    """Images without a glass border (every pixel tissue: windows inside the brain) show the aligner no tissue;
    that does not make the sections of a data set aligned elsewhere empty, when they are most of them."""
    from brainmap.pipeline.align import sections_without_tissue
    from brainmap.specimen import read_dataset
    from brainmap.specimen.folder import read_section_image

    folder = _copy(specimens, tmp_path, "ish")
    dataset = read_dataset(folder)
    assert sections_without_tissue(folder, dataset, reference_resolution_um=50) == []
    rng = np.random.default_rng(0)
    for k, image in enumerate(dataset.sorted_images()):
        if k % 3 == 0:
            continue  # a third of the sections whole: the rest are windows
        tissue = read_section_image(folder, image, "tissue")
        level = np.percentile(tissue, 99)  # the tissue's level, everywhere, under a camera's shot noise
        window = rng.poisson(level, tissue.shape).astype(tissue.dtype)
        tifffile.imwrite(folder / "images" / image.channels["tissue"], window)
    assert sections_without_tissue(folder, dataset, reference_resolution_um=50) == []


def test_sigkill_in_the_middle_then_rerun_finishes_with_correct_outputs(specimens, completed, tmp_path,
                                                                       reaping_semaphores):
    killed = _copy(specimens, tmp_path, "conn")
    command = [sys.executable, "-m", "brainmap.cli", "run", str(killed), "--keep-alignment", "--workers", "1"]
    with reaping_semaphores():
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + 120
        align_record = killed / PIPELINE_DIR / "align.record.json"
        while not align_record.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        # into detection and gridding: on a 2-core AMD EPYC the whole grid stage of this specimen takes ~1.4 s
        # after the align record (Dask's worker start included), 2 s was past its end
        time.sleep(0.5)
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the runner and its Dask workers, no clean-up
        process.wait(timeout=30)
    assert not (killed / PIPELINE_DIR / "unionize.record.json").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "align skipped" in result.stdout and "unionize done" in result.stdout
    assert _outputs(killed) == completed[3]["conn"]  # the same data as an uninterrupted run, to the bit
    assert not list(killed.rglob(".*.tmp")), "a temporary file survived"
    doc = json.loads((killed / PIPELINE_DIR / "unionize.record.json").read_text())
    assert doc["summary"]["rows"] > 100


def test_run_with_an_existing_dask_cluster(specimens, tmp_path):
    from distributed import LocalCluster

    ish = _copy(specimens, tmp_path, "ish")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        runs = run_pipeline([ish], SETTINGS, scheduler=cluster.scheduler_address, progress=False)
    assert runs[0].stages == {"align": "done", "grid": "done", "unionize": "done"}
    energy = pd.read_csv(ish / PIPELINE_DIR / UNIONIZE_FILE).query("structure_id == 997")
    assert np.isfinite(energy.expression_energy).all() and (energy.sum_pixels > 0).all()


def test_malformed_folder_fails_before_anything_runs(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text('{"schema_version": 99}')
    with pytest.raises(Exception, match="schema"):
        run_pipeline([tmp_path / "bad"], SETTINGS, progress=False)


def test_channel_volumes_stage_from_the_command_line(completed, tmp_path):
    """``brainmap run --channel-volumes`` on a finished data set adds only Allen's ImagesResampledTo25MicronARA
    zip; the tissue channel lands on the brain of the real annotation, and a second run skips it."""
    from skimage.filters import threshold_otsu

    from brainmap.atlas import ReferenceSpace
    from brainmap.io.grid_bundle import read_grid_bundle
    from brainmap.pipeline.grid.channels import CHANNEL_VOLUMES_FILE

    conn = tmp_path / "conn"
    shutil.copytree(completed[0], conn)
    command = [sys.executable, "-m", "brainmap.cli", "run", "conn", "--keep-alignment", "--workers", "1",
               "--channel-volumes"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "grid skipped" in result.stdout and "channels done" in result.stdout
    red, header = read_grid_bundle(conn / PIPELINE_DIR / CHANNEL_VOLUMES_FILE)["red"]
    assert red.shape == (528, 320, 456) and tuple(header.element_spacing) == (25.0, 25.0, 25.0)
    brain = ReferenceSpace.bundled(25).annotation > 0
    tissue = red > threshold_otsu(red[red > 0])  # fluorescence: tissue brighter than the slide
    dice = 2 * (tissue & brain).sum() / (tissue.sum() + brain.sum())
    assert dice > 0.8, dice  # 0.90 through the true alignment
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "channels skipped" in again.stdout, again.stderr[-2000:]


def test_no_ish_smoothing_switch_regrids_without_allens_smoothing(completed, tmp_path):
    """``brainmap run --no-ish-smoothing`` (the command a user types) redoes the ISH grid stage and writes the
    expression grids Allen's smoothing was left out of: those of ``grid_folder(smoothing=False)``, not the
    default run's."""
    from brainmap.pipeline.grid import grid_folder

    ish = tmp_path / "ish"
    shutil.copytree(completed[1], ish)
    grids = GridFolder(ish / PIPELINE_DIR / "grids", resolution=200)
    smoothed = grids["density"]
    command = [sys.executable, "-m", "brainmap.cli", "run", str(ish), "--keep-alignment", "--workers", "1",
               "--no-ish-smoothing"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "grid done" in result.stdout and "unionize done" in result.stdout
    written = GridFolder(ish / PIPELINE_DIR / "grids", resolution=200)["density"]
    unsmoothed = grid_folder(ish, smoothing=False).volumes["density"]
    assert np.array_equal(written, unsmoothed)
    data = (written >= 0) & (smoothed >= 0)
    assert not np.allclose(written[data], smoothed[data])
    # smoothing lowers the voxel-to-voxel differences along every axis
    for axis in range(3):
        rough = np.abs(np.diff(np.where(data, written, 0), axis=axis))[np.diff(data, axis=axis) == 0].mean()
        smooth = np.abs(np.diff(np.where(data, smoothed, 0), axis=axis))[np.diff(data, axis=axis) == 0].mean()
        assert smooth < rough
    # the default run again: the stage is redone and the smoothed grids are back, byte for byte
    result = subprocess.run(command[:-1], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "grid done" in result.stdout, result.stderr[-2000:]
    assert _outputs(ish) == completed[3]["ish"]


def _worker_settings() -> dict:
    import dask

    names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    housekeeping = ("admin.tick.interval", "admin.system-monitor.interval", "worker.memory.monitor-interval")
    return {**{name: os.environ.get(name) for name in names},
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            **{name: dask.config.get(f"distributed.{name}") for name in housekeeping}}


def test_local_workers_keep_one_blas_thread_and_glibcs_own_malloc_thresholds_and_run_no_profiler():
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_, which froze glibc's mmap threshold at 128 KiB and made the
    demo spend more time faulting fresh pages than computing; the runner's local workers go without it, without
    Dask's profiler (it samples every task's stack for a dashboard a local run does not start), and with its
    housekeeping callbacks (event-loop tick, system and memory monitors) at longer intervals."""
    import dask

    from brainmap.pipeline.run.runner import dask_client

    os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"  # as a Dask nanny started earlier in this process leaves it
    try:
        with dask_client(workers=1) as client:
            seen = client.run(_worker_settings)
        assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's environment is given back
    finally:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    (worker,) = seen.values()
    assert worker == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "profile": False, "admin.tick.interval": "1s", "admin.system-monitor.interval": "5s",
                      "worker.memory.monitor-interval": "500ms"}
    assert dask.config.get("distributed.worker.profile.enabled") is True  # this process's config is given back
    assert dask.config.get("distributed.admin.tick.interval") == "20ms"


def test_packed_partials_unpack_to_the_same_bits_in_fewer_bytes(specimens, same_bits):
    """The map step sends connectivity partials packed (PackedPartial) and summed per voxel; the reducer must get
    the very per-voxel sums of the partial the gridder made, and sum the very bits: a real section of the
    connectivity specimen gridded at 25 um, as the demo does."""
    import pickle

    from brainmap.pipeline.grid import Gridder, PartialGrid
    from brainmap.pipeline.grid.resample import reduce_partial
    from brainmap.pipeline.run.runner import PackedPartial, _add, _grid_one_section
    from brainmap.specimen.folder import read_dataset, read_section_image

    folder = specimens / "conn"
    dataset = read_dataset(folder)
    gridder = Gridder.for_dataset(dataset, 100, also_um=(25,))
    image = gridder.usable_images()[len(gridder.usable_images()) // 2]
    made = gridder.process(image, {c: read_section_image(folder, image, c) for c in image.channels})
    sent = _grid_one_section(gridder, str(folder), image)
    assert all(isinstance(p, PackedPartial) for p in sent)
    received = pickle.loads(pickle.dumps(sent, protocol=5))
    got = [p.unpack() for p in received]
    assert [p.reduced for p in received] == [True, True]
    for mine, theirs in zip(made, got, strict=True):
        index, sums = reduce_partial(mine)
        assert isinstance(theirs, PartialGrid) and theirs.spec == mine.spec
        assert theirs.index.dtype == np.int64 and np.array_equal(theirs.index, index)
        assert set(theirs.values) == set(mine.values)
        for name, values in sums.items():
            assert theirs.values[name].dtype == np.float64
            assert same_bits(theirs.values[name], values), name
    # summed as the gridder's own partials are, the packed ones added as they travelled (no unpacking); with
    # the dense quantities too (an accumulator whose quantities are dense from the first entry)
    for dense_fraction in (0.25, 0.0):
        ours, theirs = gridder.accumulator(), gridder.accumulator()
        for accumulator in (ours, theirs):
            for part in accumulator.parts:
                part._dense_limit = dense_fraction * part.spec.n_voxels / 2
        ours.add(made)
        _add(theirs, received)
        for mine, sent_part in zip(ours.parts, theirs.parts, strict=True):
            assert mine.names and set(mine.names) == set(sent_part.names)
            assert bool(sent_part.sums) == (dense_fraction == 0.0)
            for name in mine.names:
                assert same_bits(mine.get(name), sent_part.get(name)), name
    fine = made[1]
    assert fine.spec.resolution_um == 25 and fine.index.size > 100_000
    assert len(pickle.dumps(sent[1], protocol=5)) < 0.6 * len(pickle.dumps(fine, protocol=5))
