"""The shared-memory hand-off of section partials (pipeline/run/handoff.py): blocks read back to the bits written,
reused once read, a run's directory swept on close and a dead run's at the next start, and the in-band path
wherever shared memory cannot be used."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from brainmap.pipeline.grid.resample import GridAccumulator, GridSpec, PartialGrid
from brainmap.pipeline.run.handoff import SHM_ROOT, Handoff, sweep_stale
from brainmap.pipeline.run.runner import PackedPartial, SharedPartial, _add, _pack

pytestmark = pytest.mark.skipif(not SHM_ROOT.is_dir(), reason="no /dev/shm on this machine")


def _ours() -> list[str]:
    return [n for n in os.listdir(SHM_ROOT) if n.startswith(f"brainmap-handoff-{os.getpid()}-")]


@pytest.fixture
def handoff():
    made = Handoff.create()
    assert made is not None
    yield made
    made.close()


def _partial(seed: int, spec: GridSpec) -> PartialGrid:
    """A reduced partial (each voxel once, ascending) with a sparse, a half-full and a full quantity."""
    rng = np.random.default_rng(seed)
    index = np.unique(rng.integers(0, spec.n_voxels, 5000))
    n = index.size
    sparse = np.where(rng.random(n) < 0.02, rng.random(n), 0.0)
    half = np.where(rng.random(n) < 0.5, rng.standard_normal(n), 0.0)
    half[:3] = -0.0  # a negative zero is 0: not sent, adds nothing
    full = rng.random(n) + 1.0
    return PartialGrid(spec, index, {"signal": sparse, "tissue": half, "covered": full})


def test_a_block_reads_back_the_arrays_written_and_is_gone_once_read(handoff):
    made = handoff.allocate([(np.int32, 7), (np.uint8, 1), (np.float64, 3)])
    assert made is not None
    block, (a, b, c) = made
    a[:] = np.arange(7)
    b[:] = 0b1010_0000
    c[:] = [0.5, -1.0, np.pi]
    del a, b, c, made
    assert handoff.blocks() == [os.path.basename(block.path)]
    x, y, z = block.open()
    assert handoff.blocks() == [os.path.basename(block.path)]  # read in place
    assert x.dtype == np.int32 and x.tolist() == list(range(7))
    assert y.tolist() == [0b1010_0000] and z.tolist() == [0.5, -1.0, np.pi]
    with pytest.raises(ValueError):
        z[0] = 1.0  # read-only
    assert all(offset % 64 == 0 for _, _, offset in block.layout)
    del x, y, z
    block.recycle()  # read: back to the run's pool, its pages kept
    assert handoff.blocks() == [] and len(handoff.pooled()) == 1
    again, (w,) = handoff.allocate([(np.float64, 5)])  # a smaller block: the pooled file, reused
    assert handoff.pooled() == [] and handoff.blocks() == [os.path.basename(again.path)]
    w[:] = 7.0
    del w
    assert again.open()[0].tolist() == [7.0] * 5
    again.discard()
    assert handoff.blocks() == [] and handoff.pooled() == []


def test_the_pool_of_free_blocks_is_bounded(handoff):
    from brainmap.pipeline.run.handoff import POOL_BLOCKS

    made = [handoff.allocate([(np.float64, 100)]) for _ in range(POOL_BLOCKS + 3)]
    for block, _ in made:
        block.recycle()
    assert len(handoff.pooled()) == POOL_BLOCKS and handoff.blocks() == []


def _pooled_sizes(handoff) -> list[int]:
    return sorted(int(name.split("-")[0]) for name in handoff.pooled())


def test_a_block_is_claimed_from_the_smallest_pooled_block_that_holds_it(handoff):
    made = [handoff.allocate([(np.float64, n)]) for n in (1000, 100, 10)]  # 8,000, 800 and 80 bytes
    for block, _ in made:
        block.recycle()
    claimed, _ = handoff.allocate([(np.float64, 50)])  # 400 bytes: the 800-byte block
    assert claimed.size == 400 and os.path.getsize(claimed.path) == 800
    assert _pooled_sizes(handoff) == [80, 8000]
    grown, _ = handoff.allocate([(np.float64, 2000)])  # 16,000 bytes: none holds it, the largest is grown
    assert os.path.getsize(grown.path) == 16000 and _pooled_sizes(handoff) == [80]


def test_the_pool_of_free_blocks_is_bounded_in_bytes(handoff, monkeypatch):
    from brainmap.pipeline.run import handoff as module

    monkeypatch.setattr(module, "POOL_BYTES", 10_000)
    made = [handoff.allocate([(np.float64, 400)]) for _ in range(5)]  # 3,200 bytes each: three fit
    for block, _ in made:
        block.recycle()
    assert _pooled_sizes(handoff) == [3200] * 3 and handoff.blocks() == []


def test_shared_partials_add_the_bits_of_in_band_ones(handoff, same_bits):
    spec = GridSpec.allen(100)
    inband, shared = GridAccumulator(spec, dense_fraction=0.005), GridAccumulator(spec, dense_fraction=0.005)
    for seed in range(6):
        partial = _partial(seed, spec)
        packed = PackedPartial.pack(partial)
        travelled = _pack(partial, handoff)
        assert isinstance(travelled, SharedPartial) and handoff.blocks()
        opened = travelled.open()
        assert [a.tobytes() for a in opened.arrays()] == [a.tobytes() for a in packed.arrays()]
        assert [a.dtype for a in opened.arrays()] == [a.dtype for a in packed.arrays()]
        del opened
        travelled.block.recycle()
        _add(inband, packed)
        _add(shared, _pack(partial, handoff))
        assert handoff.blocks() == [] and len(handoff.pooled()) == 1  # read, and its block reused
    assert shared.sums and shared.entries  # both kinds of quantity were exercised
    assert sorted(shared.names) == sorted(inband.names)
    for name in inband.names:
        assert same_bits(shared.get(name), inband.get(name)), name
    for name, chunks in shared.entries.items():  # the sparse entries keep no view of a block's mapping
        assert all(i.base is None and v.base is None for i, v in chunks), name


def test_in_band_where_shared_memory_cannot_be_used(handoff, tmp_path):
    spec = GridSpec.allen(100)
    partial = _partial(1, spec)
    elsewhere = replace(handoff, host="another-host/0")  # a worker on another machine
    assert not elsewhere.usable()
    assert isinstance(_pack(partial, elsewhere), PackedPartial)
    assert isinstance(_pack(partial, None), PackedPartial)
    assert Handoff.create(tmp_path / "missing") is None  # no shared-memory directory: the runner goes in-band
    closed = Handoff.create()
    closed.close()  # the run is over: a task still running sends in-band and leaves nothing behind
    assert isinstance(_pack(partial, closed), PackedPartial)
    assert closed.allocate([(np.float64, 10)]) is None
    assert not os.path.exists(closed.directory)
    assert handoff.allocate([(np.float64, 0)]) is None  # nothing to share


def test_close_sweeps_unread_blocks_and_a_dead_runs_directory_is_swept(handoff):
    for seed in range(3):
        _pack(_partial(seed, GridSpec.allen(100)), handoff)  # never read (a cancelled future, an error)
    assert len(handoff.blocks()) == 3
    handoff.close()
    assert not os.path.exists(handoff.directory)
    # a run killed before its sweep: its directory is removed by the next run's create
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = SHM_ROOT / f"brainmap-handoff-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "block").write_bytes(b"x" * 100)
    alive = SHM_ROOT / f"brainmap-handoff-{os.getpid()}-kept"  # a live run's is left alone
    alive.mkdir()
    try:
        assert stale in sweep_stale()
        assert not stale.exists() and alive.exists()
    finally:
        alive.rmdir()
