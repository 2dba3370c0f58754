"""The runner's section reduction: partials fetched, added and finished in its threads, in section order whatever
order the sections finish in, none lost, and an error in a section or a finish raised in the caller's thread."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from brainmap.pipeline.grid import Gridder
from brainmap.pipeline.run.runner import (
    SectionReduction, SharedPartial, _add, _grid_one_section, _is_large, grid_sections,
)
from brainmap.specimen.folder import read_dataset
from brainmap.specimen.synthetic import make_specimen


@pytest.fixture(scope="module")
def connectivity(tmp_path_factory) -> Path:
    """A connectivity data set of 41 consecutive sections of the demo's experiment (of 124: enough to finish out
    of order on four threads, neighbours sharing grid voxels; each test grids it several times)."""
    folder = tmp_path_factory.mktemp("reduction") / "conn"
    make_specimen("connectivity", folder, experiment_id=112672974, pixel_size_um=50, truth_resolution_um=100,
                  alignment="all", progress=False)
    document = folder / "dataset.json"
    doc = json.loads(document.read_text())
    doc["images"] = doc["images"][40:81]
    document.write_text(json.dumps(doc))
    return folder


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    # threads in this process: four sections at once, finishing in a shuffled order (the delays below)
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


@dataclass
class ShuffledGridder(Gridder):
    """The data set's gridder, each section delayed by a random few milliseconds (so they finish out of order);
    ``fail_at`` (an image id) raises there."""

    fail_at: int | None = None

    def process(self, image, arrays):
        if image.id == self.fail_at:
            raise ValueError(f"section {image.id} is unreadable")
        time.sleep(random.Random(image.id).uniform(0.0, 0.05))
        return super().process(image, arrays)


def _gridder(folder: Path, **extra) -> ShuffledGridder:
    """100 and 50 um grids, and a 200 um one: there a voxel takes two or three sections, so the order in which
    they are added shows in its bits (a float sum of two is the same either way round)."""
    made = Gridder.for_dataset(read_dataset(folder), 100, also_um=(50, 200))
    return ShuffledGridder(**{name: getattr(made, name) for name in made.__dataclass_fields__}, **extra)


def test_large_accumulators_are_25_um_connectivity_and_finer(connectivity):
    dataset = read_dataset(connectivity)
    assert _is_large(Gridder.for_dataset(dataset, 100, also_um=(25,)).accumulator())
    assert not _is_large(Gridder.for_dataset(dataset, 100).accumulator())


def _serial(gridder: Gridder, folder: Path):
    accumulator = gridder.accumulator()
    for image in gridder.usable_images():
        _add(accumulator, _grid_one_section(gridder, str(folder), image))
    return accumulator


@pytest.fixture(scope="module")
def serial(connectivity):
    """The data set's sections summed one after another in section order, in this process (made once: the
    tests below only read it)."""
    return _serial(_gridder(connectivity), connectivity)


@pytest.mark.parametrize("batch", [1, 3])
def test_sections_are_summed_in_section_order_and_none_is_lost(connectivity, client, serial, same_bits, batch):
    """Two large data sets (a 50 um grid: 77 MB volumes), sections finishing out of order, one or three to a task
    (41 sections: the last task holds two): each summed to the bits of a serial sum in section order, finished in
    the reduction's thread, and the second one's sections held back (not added) until the first one is finished
    (memory: one large accumulator at a time)."""
    from distributed import as_completed

    gridder = _gridder(connectivity)
    other = connectivity.parent / "again"  # the same data set twice
    if not other.exists():
        shutil.copytree(connectivity, other)
    finished = []

    def finish(folder, accumulator):
        held = reduction.accumulators.get(other)
        before = held.sections if held is not None else None
        time.sleep(0.5)  # a slow writer: the other data set's sections arrive meanwhile
        after = held.sections if held is not None else None
        finished.append((folder, accumulator, threading.current_thread() is threading.main_thread(), before, after))

    with SectionReduction(client, finish, batch=batch) as reduction:
        futures = reduction.submit(connectivity, gridder, priority=2) + reduction.submit(other, gridder, priority=1)
        assert len(futures) == 2 * -(-41 // batch)
        taken = sum(reduction.take(future) for future in as_completed(futures))
        assert taken == 2 * 41 == reduction.sections(connectivity) + reduction.sections(other)
        assert list(reduction.join()) == [connectivity, other]
    assert reduction.accumulators == {}
    assert [f for f, *_ in finished] == [connectivity, other]
    assert not any(on_main for _, _, on_main, _, _ in finished)  # finished in the reduction's thread
    _, _, _, before, after = finished[0]
    assert before == after == 0  # large data sets summed one at a time: the other one waits for this one's finish
    expected = serial
    for _, accumulator, *_ in finished:
        assert accumulator.sections == len(gridder.usable_images())
        for ours, theirs in zip(expected.parts, accumulator.parts, strict=True):
            assert ours.names and ours.names == theirs.names
            for name in ours.names:  # the very bits: the same additions in the same order
                assert same_bits(ours.get(name), theirs.get(name)), name


def test_without_finish_the_accumulators_are_returned(connectivity, client, serial, same_bits):
    gridder = _gridder(connectivity)
    (accumulator,) = grid_sections(client, {connectivity: gridder}, progress=False).values()
    expected = serial
    assert accumulator.sections == expected.sections
    for ours, theirs in zip(expected.parts, accumulator.parts, strict=True):
        for name in ours.names:
            assert same_bits(ours.get(name), theirs.get(name)), name


def test_a_failing_section_or_finish_is_raised_in_the_callers_thread(connectivity, client):
    images = _gridder(connectivity).usable_images()
    broken = _gridder(connectivity, fail_at=images[len(images) // 2].id)
    with pytest.raises(ValueError, match="unreadable"):
        grid_sections(client, {connectivity: broken}, progress=False, finish=lambda f, a: None)

    def finish(folder, accumulator):
        raise OSError(f"disk full writing {folder}")

    with pytest.raises(OSError, match="disk full"):
        grid_sections(client, {connectivity: _gridder(connectivity)}, progress=False, finish=finish)


def _our_blocks() -> list[str]:
    """This process's hand-off directories in /dev/shm (none once a reduction is closed)."""
    shm = Path("/dev/shm")
    return [n for n in os.listdir(shm) if n.startswith(f"brainmap-handoff-{os.getpid()}-")] if shm.is_dir() else []


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this machine")
def test_worker_processes_hand_partials_over_in_shared_memory_to_the_same_bits(connectivity, serial, same_bits):
    """Real worker processes: their partials come back as shared-memory blocks, read to the bits of the in-band
    path; nothing is left in /dev/shm after the run."""
    from distributed import Client, LocalCluster

    gridder = _gridder(connectivity)
    images = gridder.usable_images()
    expected = serial  # in-band, in this process
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            with SectionReduction(client) as reduction:
                result = client.submit(_grid_one_section, gridder, str(connectivity), images[0], reduction.handoff,
                                       pure=False).result()
                assert all(isinstance(one, SharedPartial) for one in result)
                assert len(reduction.handoff.blocks()) == len(result)
                one = gridder.accumulator()
                _add(one, result)
                assert reduction.handoff.blocks() == []
                single = gridder.accumulator()
                _add(single, _grid_one_section(gridder, str(connectivity), images[0]))
                for ours, theirs in zip(single.parts, one.parts, strict=True):
                    for name in ours.names:
                        assert same_bits(ours.get(name), theirs.get(name)), name
            assert _our_blocks() == []
            (accumulator,) = grid_sections(client, {connectivity: gridder}, progress=False).values()
    assert _our_blocks() == []
    for ours, theirs in zip(expected.parts, accumulator.parts, strict=True):
        for name in ours.names:
            assert same_bits(ours.get(name), theirs.get(name)), name


def test_nothing_is_left_in_shared_memory_after_an_error_or_an_interrupt(connectivity, client):
    from distributed import as_completed

    images = _gridder(connectivity).usable_images()
    broken = _gridder(connectivity, fail_at=images[len(images) // 3].id)
    with pytest.raises(ValueError, match="unreadable"):
        grid_sections(client, {connectivity: broken}, progress=False, finish=lambda f, a: None)
    assert _our_blocks() == []
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C with sections fetched, waiting, and never fetched
        with SectionReduction(client, lambda f, a: None) as reduction:
            futures = reduction.submit(connectivity, _gridder(connectivity))
            for count, future in enumerate(as_completed(futures)):
                if count == len(futures) // 2:
                    raise KeyboardInterrupt
                reduction.take(future)
    client.cancel(futures)
    assert reduction.handoff is not None and not os.path.exists(reduction.handoff.directory)
    assert _our_blocks() == []
    assert SectionReduction(client, shared_memory=False).handoff is None  # the in-band path, on request


def test_a_gridder_is_large_as_its_accumulator_is(connectivity):
    from brainmap.pipeline.run.runner import _gridder_is_large

    dataset = read_dataset(connectivity)
    for gridder in (Gridder.for_dataset(dataset, 100, also_um=(25,)), Gridder.for_dataset(dataset, 100),
                    Gridder.for_dataset(dataset, 50)):
        assert _gridder_is_large(gridder) == _is_large(gridder.accumulator())
