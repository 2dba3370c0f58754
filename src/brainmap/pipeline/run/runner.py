"""The runner: data sets through align -> detect -> grid -> unionize, resumable and parallel with Dask.

Each data set folder gets a ``pipeline/`` folder beside its images::

    <dataset>/pipeline/
      alignment.json               # the Alignment2d of every image and the Alignment3d (Allen's parameters)
      align.record.json            # stage records (see brainmap.pipeline.run.records)
      grids/                       # {name}_{res}.nrrd (and ISH MetaImages + grid_data.zip)
      grid.record.json
      structure_unionizes.csv      # Allen's (Projection)StructureUnionize rows
      unionize.record.json

Every artefact is written atomically and each stage's record last, so a run killed at any moment (even with
SIGKILL) and started again redoes only what is not verifiably done, and never takes a half-written file for a
result. A stage is redone when its inputs or parameters change.

Parallelism (Dask): all data sets are aligned at once (one task each); as soon as one is aligned, its sections are
detected and gridded, a few consecutive sections to a task (run after the alignments still waiting), their partial
grids summed as they arrive; then each data set is unionized (one task each). By default a local cluster of worker
processes is started; ``scheduler=`` connects to an existing dask.distributed scheduler instead
(``docs/performance-demo.md``: what the runner does about Dask's costs).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from brainmap.io.atomic import atomic_write
from brainmap.pipeline.grid.resample import PartialGrid, reduce_partial
from brainmap.pipeline.run.handoff import Handoff, SharedBlock
from brainmap.pipeline.run.layout import PipelineFolder
from brainmap.pipeline.run.records import (
    StageRecord,
    fingerprint,
    remove_stale_temporaries,
    stage_is_done,
)
from brainmap.specimen.folder import dataset_to_dict, read_dataset, read_section_image, update_alignment
from brainmap.specimen.model import SectionDataSet, SectionImage
from brainmap.specimen.transforms import Alignment2d, Alignment3d

PIPELINE_DIR = PipelineFolder.WORK
GRID_DIR = PipelineFolder.GRIDS
ALIGNMENT_FILE = PipelineFolder.ALIGNMENT
UNIONIZE_FILE = PipelineFolder.UNIONIZE
#: The version of what the grid and unionize stages write: a change of their outputs' content or columns bumps
#: it, so folders made by an earlier brainmap are redone, not taken as done (2: Allen's ISH smoothing and
#: sum_pixel_intensity grids, AllenSDK's unionize rules; 3: the detector's rules for coarse ISH cells and
#: clipped axons; 4: the connectivity noise refit where axons are dense; 5: flat coarse ISH cells cut at half
#: their plateau; 6: coarse axon pixels judged against their fibre's full crossing; 7: the ISH cell size fitted
#: with the camera's box and the local mean exactly, the ISH tissue mask down to the glass's noise floor).
STAGE_FORMAT = 7
#: The version of what the align stage finds, in its fingerprint: a change of the aligner's results bumps it, so
#: data sets aligned by an earlier brainmap are aligned again, not taken as done (1: round 6's aligner, nested
#: point subsets in the early rounds and unsmoothed later 3-D rounds; folders aligned before it had no version;
#: 2: an empty slide's noise is no tissue, and the record lists the sections without tissue, which are not gridded;
#: with the transforms kept, the sections are read for that alone).
ALIGN_FORMAT = 2


@dataclass(frozen=True)
class RunSettings:
    """Parameters of a run.

    Attributes:
        reference_resolution_um: the template resolution alignment registers to (25, 50 or 100 um).
        grid_resolution_um: connectivity grid (10, 25, 50 or 100 um) that unionize reads; ISH always uses
            Allen's 200 um grid.
        nonlinear: align with the non-linear stage after the affine (the default).
        contrast: the aligner's similarity: ``"model"`` (the default; any stain) or ``"template"`` (specimens
            with the annotation-derived template's Nissl-like contrast).
        extra_grid_resolutions_um: connectivity grids also written (from the same detections), e.g. ``(25,)``
            beside 100 um, the resolution AllenSDK's ``MouseConnectivityCache`` asks for by default.
        keep_alignment: use the transforms already in ``dataset.json`` when it has them all (data aligned
            elsewhere) instead of aligning again.
        channel_volumes: also resample connectivity data sets' image channels into the 25 um CCF (Allen's
            ``ImagesResampledTo25MicronARA.zip``; at most 1.6 GB of memory per data set at a time).
        ish_smoothing: Allen's smoothing of ISH expression grids (the default); ``False`` writes them unsmoothed
            (``brainmap run --no-ish-smoothing``).
        first_alignment_levels_um: the aligner's first-round smoothing levels (microns, coarse to fine),
            ``(3-D, 2-D)``; None: the aligner's defaults (``AlignSettings.first_volume_sigmas_um``,
            ``first_sigmas_um``).
    """

    reference_resolution_um: int = 25
    grid_resolution_um: int = 100
    keep_alignment: bool = False
    extra_grid_resolutions_um: tuple[int, ...] = ()
    nonlinear: bool = True
    contrast: str = "model"
    channel_volumes: bool = False
    ish_smoothing: bool = True
    first_alignment_levels_um: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def grid_resolution(self, product: str) -> int:
        return 200 if product == "ish" else int(self.grid_resolution_um)


@dataclass
class DatasetRun:
    """What a run did to one data set: each stage "done" (ran now) or "skipped" (verified as done before)."""

    folder: Path
    dataset_id: int
    product: str
    stages: dict[str, str] = field(default_factory=dict)
    unionize_path: Path | None = None


# --------------------------------------------------------------------------- fingerprints
def _identity(dataset: SectionDataSet) -> dict[str, Any]:
    """``dataset.json`` without the transforms: what alignment depends on."""
    doc = dataset_to_dict(dataset)
    doc.pop("alignment3d", None)
    for image in doc["images"]:
        image.pop("alignment2d", None)
    return doc


def image_signature(folder: Path, dataset: SectionDataSet) -> list[tuple[str, int, int]]:
    """(name, bytes, mtime_ns) of every image file: a change of any image redoes the stages that read them."""
    signature = []
    for image in dataset.images:
        for file_name in sorted(image.channels.values()):
            stat = (folder / "images" / file_name).stat()
            signature.append((file_name, stat.st_size, stat.st_mtime_ns))
    return signature


def _align_fingerprint(folder: Path, dataset: SectionDataSet, settings: RunSettings) -> str:
    return fingerprint([], {"stage": "align", "format": ALIGN_FORMAT, "dataset": _identity(dataset),
                            "images": image_signature(folder, dataset),
                            "reference_resolution_um": settings.reference_resolution_um,
                            "keep_alignment": settings.keep_alignment,
                            **({} if settings.nonlinear else {"nonlinear": False}),
                            **({} if settings.contrast == "model" else {"contrast": settings.contrast}),
                            **({} if settings.first_alignment_levels_um is None
                               else {"first_levels_um": [list(map(float, levels))
                                                         for levels in settings.first_alignment_levels_um]})})


def _grid_fingerprint(folder: Path, dataset: SectionDataSet, settings: RunSettings) -> str:
    return fingerprint([PipelineFolder.of(folder).alignment],
                       {"stage": "grid", "format": STAGE_FORMAT, "images": image_signature(folder, dataset),
                        "grid_resolution_um": settings.grid_resolution(dataset.product),
                        **({"also_um": list(settings.extra_grid_resolutions_um)}
                           if settings.extra_grid_resolutions_um and dataset.product == "connectivity" else {}),
                        **({"ish_smoothing": False}
                           if not settings.ish_smoothing and dataset.product == "ish" else {})})


def _unionize_fingerprint(folder: Path, dataset: SectionDataSet) -> str:
    grid_record = StageRecord.read(PipelineFolder.of(folder).work, "grid")
    outputs = grid_record.outputs if grid_record else {}
    return fingerprint([], {"stage": "unionize", "format": STAGE_FORMAT, "grids": outputs, "id": dataset.id,
                            "pixel_size_um": dataset.pixel_size_um})


# --------------------------------------------------------------------------- align
def _write_alignment(layout: PipelineFolder, dataset: SectionDataSet, without_tissue: Sequence[int] = ()) -> Path:
    path = layout.alignment
    doc = {
        "alignment3d": dataset.alignment3d.to_allen(),
        "alignment2d": {str(i.id): i.alignment2d.to_allen() for i in dataset.images if i.alignment2d is not None},
        "without_tissue": sorted(int(i) for i in without_tissue),
    }
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    return path


def _without_tissue(layout: PipelineFolder) -> frozenset[int]:
    """The image ids the aligner found no tissue in (the alignment record's; none for a record without them)."""
    doc = json.loads(layout.alignment.read_text(encoding="utf-8"))
    return frozenset(int(i) for i in doc.get("without_tissue", ()))


def _restore_alignment(layout: PipelineFolder) -> None:
    """Make ``dataset.json`` carry the recorded transforms (it may have been rewritten since)."""
    folder = layout.dataset
    doc = json.loads(layout.alignment.read_text(encoding="utf-8"))
    alignment3d = Alignment3d.from_allen(doc["alignment3d"])
    alignment2d = {int(k): Alignment2d.from_allen(v) for k, v in doc["alignment2d"].items()}
    dataset = read_dataset(folder, check_files=False)
    current = {i.id: i.alignment2d for i in dataset.images}
    if dataset.alignment3d != alignment3d or any(current.get(k) != v for k, v in alignment2d.items()):
        update_alignment(folder, alignment2d, alignment3d, dataset.deformation)


def align_stage(folder: str | os.PathLike[str], settings: RunSettings) -> str:
    """Align one data set unless done; returns "done" or "skipped". Runs in a Dask worker."""
    from brainmap.pipeline.align import align_dataset, sections_without_tissue

    layout = PipelineFolder.of(folder).make()
    folder, work = layout.dataset, layout.work
    remove_stale_temporaries(folder)
    dataset = read_dataset(folder)
    expected = _align_fingerprint(folder, dataset, settings)
    if stage_is_done(work, "align", expected):
        _restore_alignment(layout)
        return "skipped"
    aligned = dataset.alignment3d is not None and all(i.alignment2d is not None for i in dataset.images if not i.failed)
    if not (settings.keep_alignment and aligned):
        result = align_dataset(folder, reference_resolution_um=settings.reference_resolution_um, progress=False,
                               nonlinear=settings.nonlinear, contrast=settings.contrast,
                               first_levels_um=settings.first_alignment_levels_um)
        without_tissue = result.without_tissue
        dataset = read_dataset(folder)
    else:  # the transforms kept: the sections are read for their tissue alone
        without_tissue = sections_without_tissue(folder, dataset,
                                                 reference_resolution_um=settings.reference_resolution_um)
    path = _write_alignment(layout, dataset, without_tissue)
    StageRecord("align", expected, StageRecord.describe_outputs(work, [path])).write(work)
    return "done"


# --------------------------------------------------------------------------- detect + grid
#: Sections per detect + grid task. Each dask task costs ~5 ms of the client's process and ~2 ms of its worker's
#: CPU whatever it does (700 trivial tasks on a local cluster of two: 3.5 s of the main process's CPU one to a
#: task, 0.8 s four to a task), and a worker waits for its next task's message. The demo's 451 sections, runs one
#: after another on one machine: 1 to a task 78.0 / 69.9 s, 4 73.3 / 65.6 s, 8 67.4 / 63.2 s; 8, 16 and 32 the same
#: within the noise (docs/performance-demo.md, round 12). A connectivity section takes 50-70 ms: eight hold the
#: last task to about half a second.
SECTIONS_PER_TASK = 8


def _grid_one_section(gridder, folder: str, image: SectionImage, handoff: Handoff | None = None):
    """The map step: read one section's channels, detect, grid; returns the partial grid (connectivity partials
    packed for the trip to the process that sums them: :class:`PackedPartial`; with a ``handoff`` usable here,
    packed into shared memory and returned as a :class:`SharedPartial`)."""
    arrays = {channel: read_section_image(folder, image, channel) for channel in image.channels}
    result = gridder.process(image, arrays)
    if isinstance(result, list):
        return [_pack(p, handoff) if isinstance(p, PartialGrid) else p for p in result]
    return _pack(result, handoff) if isinstance(result, PartialGrid) else result


def _grid_sections(gridder, folder: str, images: Sequence[SectionImage], handoff: Handoff | None = None) -> list:
    """:func:`_grid_one_section` for a run of consecutive sections, one task: the results in their order. A
    section's error fails the run, whose shared-memory directory is swept on close with whatever it holds."""
    return [_grid_one_section(gridder, folder, image, handoff) for image in images]


def _pack(partial: PartialGrid, handoff: Handoff | None) -> PackedPartial | SharedPartial:
    if handoff is None or not handoff.usable():
        return PackedPartial.pack(partial)
    shared: list[SharedBlock] = []

    def allocate(layout: list[tuple[np.dtype, int]]) -> list[np.ndarray] | None:
        made = handoff.allocate(layout)
        if made is None:
            return None
        shared.append(made[0])
        return made[1]

    packed = PackedPartial.pack(partial, allocate=allocate)
    if not shared:  # no shared memory for it: in-band
        return packed
    return SharedPartial.of(packed, shared[0])


def _add(accumulator: Any, result: Any) -> None:
    """Add a section's result, as it came from its worker, to its data set's accumulator: a packed partial that
    was summed per voxel in the worker (:class:`PackedPartial`, ``reduced``) goes into a
    :class:`~brainmap.pipeline.grid.GridAccumulator` as it travelled (no unpacking: its 0 entries add nothing),
    anything else unpacked (e.g. into a SpillAccumulator, or an ISH section's grid)."""
    from brainmap.pipeline.grid import GridAccumulator, GridAccumulators

    if isinstance(accumulator, GridAccumulators):
        for part, one in zip(accumulator.parts, result, strict=True):
            _add(part, one)
    elif isinstance(result, SharedPartial):
        packed = result.open()  # read in place (the accumulator keeps no view of it: it copies what it keeps)
        try:
            _add(accumulator, packed)
        finally:
            del packed
            result.block.recycle()  # its pages kept for a worker's next block
    elif isinstance(result, PackedPartial) and result.reduced and isinstance(accumulator, GridAccumulator):
        accumulator.add_masked(result.spec, result.index, result.values)
    elif isinstance(result, PackedPartial):  # e.g. a SpillAccumulator (a reduced partial is still a partial)
        accumulator.add(result.unpack())
    else:
        accumulator.add(result)


@dataclass
class PackedPartial:
    """A :class:`~brainmap.pipeline.grid.PartialGrid` in fewer bytes, unpacked to the same bits.

    A 50 um connectivity section gridded at 25 um touches ~0.7 M voxels (its whole plane, 5 planes deep) with
    nine float64 quantities and an int64 index: 37 MB per section, 9 GB for the demo's 248 sections pickled
    through Dask's TCP comms into the one process that sums them. Most quantities are 0 at most of those voxels
    (detected signal, the injection site; tissue at about half): the index goes as int32 when the grid allows,
    a quantity as a bit mask of its non-zero entries and their values where that is smaller. 14 MB per section.
    The worker first sums the partial per voxel (:func:`~brainmap.pipeline.grid.resample.reduce_partial`, what
    the accumulator would do; ``reduced``): the process that sums every section's partials is the grid stage's
    bottleneck (measured on the demo: ~85 ms per 25 um partial there against ~50 ms to detect and grid a section
    in a worker, half of it this reduction). The runner adds it as it travelled (:func:`_add`,
    ``GridAccumulator.add_masked``: no unpacking; docs/performance-demo.md, round 6).
    """

    spec: Any
    index: np.ndarray
    values: dict[str, tuple[np.ndarray | None, np.ndarray]]
    reduced: bool = False

    @classmethod
    def pack(cls, partial: PartialGrid, reduce: bool = True, *,
             allocate: Callable[[list[tuple[np.dtype, int]]], list[np.ndarray] | None] | None = None
             ) -> PackedPartial:
        """Pack ``partial`` (summed per voxel first if ``reduce``). ``allocate`` (optional) gives the packed
        arrays' memory: called once with every array's ``(dtype, length)``, it returns writable arrays of them
        (e.g. shared memory: :func:`_pack`) or None (numpy's own then); the arrays are filled in place."""
        if reduce:
            partial = PartialGrid(partial.spec, *reduce_partial(partial))
        n = partial.index.size
        index_dtype = np.dtype(np.int32) if partial.spec.n_voxels <= np.iinfo(np.int32).max else \
            partial.index.dtype
        masks: dict[str, tuple[np.ndarray, np.ndarray | None, int]] = {}
        layout: list[tuple[np.dtype, int]] = [(index_dtype, n)]
        for name, quantity in partial.values.items():
            quantity = np.asarray(quantity, dtype=np.float64)
            nonzero = quantity != 0
            count = int(np.count_nonzero(nonzero))
            # a bit per entry, 8 bytes per non-zero value: smaller than the whole while under ~98% non-zero
            if count < 0.98 * quantity.size:
                masks[name] = (quantity, nonzero, count)
                layout += [(np.dtype(np.uint8), (n + 7) // 8), (np.dtype(np.float64), count)]
            else:
                masks[name] = (quantity, None, quantity.size)
                layout.append((np.dtype(np.float64), quantity.size))
        buffers = allocate(layout) if allocate is not None else None
        given = buffers is not None
        if buffers is None:
            buffers = [np.empty(length, dtype) for dtype, length in layout[:1]]
            for quantity, nonzero, count in masks.values():
                buffers += [quantity] if nonzero is None else [np.empty((n + 7) // 8, np.uint8), np.empty(count)]
        arrays = iter(buffers)
        index = next(arrays)
        np.copyto(index, partial.index, casting="unsafe")  # astype's values: the grid's indices fit
        values: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
        for name, (quantity, nonzero, _) in masks.items():
            if nonzero is None:
                out = next(arrays)
                if given:
                    np.copyto(out, quantity)
                values[name] = (None, out)
            else:
                bits, out = next(arrays), next(arrays)
                bits[...] = np.packbits(nonzero)
                np.compress(nonzero, quantity, out=out)  # quantity[nonzero], written in place
                values[name] = (bits, out)
        return cls(partial.spec, index, values, reduce)

    def arrays(self) -> list[np.ndarray]:
        """The packed arrays in :meth:`pack`'s layout order (index, then each quantity's bits and values)."""
        out = [self.index]
        for bits, nonzero in self.values.values():
            out += [nonzero] if bits is None else [bits, nonzero]
        return out

    def unpack(self) -> PartialGrid:
        n = self.index.size
        values = {}
        for name, (bits, nonzero) in self.values.items():
            if bits is None:
                values[name] = nonzero
            else:
                full = np.zeros(n)
                full[np.unpackbits(bits, count=n).astype(bool)] = nonzero
                values[name] = full
        return PartialGrid(self.spec, self.index.astype(np.int64), values)


@dataclass(frozen=True)
class SharedPartial:
    """A :class:`PackedPartial` whose arrays wait in shared memory (:mod:`brainmap.pipeline.run.handoff`): what
    a worker on the main process's host returns instead of the arrays (a few hundred bytes through Dask)."""

    spec: Any
    quantities: tuple[tuple[str, bool], ...]  # each quantity's name, and whether it travels with a bit mask
    block: SharedBlock
    reduced: bool

    @classmethod
    def of(cls, packed: PackedPartial, block: SharedBlock) -> SharedPartial:
        return cls(packed.spec, tuple((name, bits is not None) for name, (bits, _) in packed.values.items()),
                   block, packed.reduced)

    def open(self) -> PackedPartial:
        """The packed partial, its arrays read-only views of the shared memory (then ``block.recycle()``)."""
        arrays = iter(self.block.open())
        index = next(arrays)
        values = {name: (next(arrays), next(arrays)) if masked else (None, next(arrays))
                  for name, masked in self.quantities}
        return PackedPartial(self.spec, index, values, self.reduced)

    def discard(self) -> None:
        self.block.discard()


def _discard(result: Any) -> None:
    """Free the shared memory of a section result dropped unread (after an error)."""
    for one in result if isinstance(result, list) else [result]:
        if isinstance(one, SharedPartial):
            one.discard()


class SectionReduction:
    """Sections of data sets gridded on a dask.distributed ``client`` (one task per ``batch`` of consecutive
    sections: read each one's channels, detect, grid) and their partial grids summed per data set, in section
    order whatever order they arrive in.

    :meth:`submit` a data set's :class:`~brainmap.pipeline.grid.Gridder` (its task futures are returned),
    :meth:`take` each finished task future (it returns how many sections it held), then :meth:`join`.
    ``finish(folder, accumulator)`` is called as soon as all of a data set's sections are in, after which the
    accumulator is dropped (so only the data sets still being gridded are held); :attr:`accumulators` keeps the
    others.

    The caller's thread only hands futures over: one thread fetches the partials from the workers (in the order
    they were taken, straight from the worker; at most ``prefetch`` ahead of the adds), one adds them, and two
    finish data sets (one large and one small at a time), so a section's fetch, the adds before it and the
    writing of a finished data set overlap (numba's adds, deflate and the comms release the GIL;
    docs/performance-demo.md, round 7). Memory: large data sets (:func:`_is_large`: a 25 um connectivity
    accumulator is 1-2 GB) are summed one at a time, in the order they were submitted: the sections of the next
    one stay on their workers until the one before is finished (its grids written); the sections of small ones
    (ISH) are fetched and added meanwhile.
    Use it as a context manager (or call :meth:`close`): the threads stop, and an error in any of them is raised
    in the caller's thread by :meth:`take`, :meth:`finished` or :meth:`join`.
    """

    _STOP = object()
    _FINISHED = object()

    def __init__(self, client: Any, finish: Callable[[Path, Any], None] | None = None, *, prefetch: int = 4,
                 shared_memory: bool | None = None, batch: int = SECTIONS_PER_TASK) -> None:
        self.client = client
        self.batch = max(1, batch)
        # Workers on this host hand their partials over through shared memory (None: in-band, e.g. no /dev/shm);
        # by default unless BRAINMAP_HANDOFF=inband (to measure one against the other).
        if shared_memory is None:
            shared_memory = os.environ.get("BRAINMAP_HANDOFF", "shared") != "inband"
        self.handoff = Handoff.create() if shared_memory else None
        self.finish = finish
        self.accumulators: dict[Path, Any] = {}
        self._pending: dict[Any, tuple[Path, int, int]] = {}  # a task's folder, first position, section count
        self._count: dict[Path, int] = {}
        self._waiting: dict[Path, dict[int, Any]] = {}
        self._added: dict[Path, int] = {}
        self._large: dict[Path, bool] = {}
        self._progress = threading.Condition()  # guards the counts and lists below
        self._error: BaseException | None = None
        self._taken = 0  # sections handed over
        self._done = 0  # of them through the adder (added, waiting for their turn, or dropped after an error)
        self._finished: list[Path] = []  # finished, not yet collected by the caller
        self._ready: list[tuple[Path, Any]] = []  # complete, waiting for the finisher
        self._finishing: set[Path] = set()  # at most one large and one small data set at a time
        self._tokens = 0  # finishes done whose token the adder has not yet handled
        self._prefetch = max(1, prefetch)
        self._in_flight = 0  # sections fetched, not yet through the adder
        self._to_fetch: list[tuple[Path, int, int, Any]] = []  # tasks taken, not yet fetched
        self._stopping = False
        self._large_order: list[Path] = []  # the large data sets not yet through, in submit order
        self._to_add: queue.Queue[Any] = queue.Queue()
        self._finisher = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="brainmap-finish")
        self._threads = [threading.Thread(target=self._fetch_loop, name="brainmap-fetch", daemon=True),
                         threading.Thread(target=self._add_loop, name="brainmap-add", daemon=True)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ the caller's thread
    def submit(self, folder: Path, gridder: Any, priority: int = 0) -> list[Any]:
        """Submit every usable section of the data set in ``folder`` (a higher ``priority`` runs first); returns
        the tasks' futures (:meth:`sections` tells how many sections that is)."""
        images = gridder.usable_images()
        accumulator = gridder.accumulator()
        with self._progress:
            self.accumulators[folder] = accumulator
            self._waiting[folder], self._added[folder] = {}, 0
            self._count[folder] = len(images)
            self._large[folder] = _is_large(accumulator)
            if self._large[folder]:
                self._large_order.append(folder)
        if not images:  # nothing to wait for: complete (empty) now
            with self._progress:
                self._taken += 1
            self._to_add.put((folder, -1, None))
            return []
        shared = self.client.scatter(gridder, broadcast=True)
        futures = []
        for start in range(0, len(images), self.batch):
            run = images[start:start + self.batch]
            future = self.client.submit(_grid_sections, shared, str(folder), run, self.handoff, pure=False,
                                        priority=priority)
            self._pending[future] = (folder, start, len(run))
            futures.append(future)
        return futures

    def sections(self, folder: Path) -> int:
        """How many sections of ``folder`` were submitted."""
        return self._count[folder]

    def __contains__(self, future: Any) -> bool:
        return future in self._pending

    def take(self, future: Any) -> int:
        """Hand over a finished task future: its partials are fetched and added (once every section before them
        in their data set is in) by this object's threads. Returns how many sections the task held."""
        self._raise()
        folder, start, count = self._pending.pop(future)
        with self._progress:
            self._taken += count
            self._to_fetch.append((folder, start, count, future))
            self._progress.notify_all()
        return count

    def finished(self) -> list[Path]:
        """The data sets finished (``finish`` returned) since the last call."""
        with self._progress:
            folders, self._finished = self._finished, []
        self._raise()
        return folders

    def join(self) -> Iterator[Path]:
        """Wait until every section taken is added and every complete data set finished; yields each data set as
        its ``finish`` returns (and those finished before, if not yet collected by :meth:`finished`)."""
        while True:
            with self._progress:
                while not self._finished and self._error is None and not self._idle():
                    self._progress.wait()
                folders, self._finished = self._finished, []
                idle = self._idle()
            self._raise()
            yield from folders
            if idle:  # a finish is listed before it counts as done: nothing is left to collect
                return

    def close(self) -> None:
        """Stop the threads (after what they hold) and wait for a finish in progress."""
        with self._progress:
            self._stopping = True
            self._progress.notify_all()
        for thread in self._threads:
            thread.join()
        self._finisher.shutdown(wait=True)
        for waiting in self._waiting.values():  # after an error: partials held back, never added
            for result in waiting.values():
                _discard(result)
            waiting.clear()
        if self.handoff is not None:  # and whatever the workers left there (sections never fetched)
            self.handoff.close()

    def __enter__(self) -> SectionReduction:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[1] is not None:
            self._fail(exc[1])  # the threads drop what they still hold
        self.close()

    def _idle(self) -> bool:
        complete = all(self._added[f] == self._count[f] or self._added[f] not in self._waiting[f]
                       for f in self._waiting)  # nothing held back that could be added
        return (self._done >= self._taken and complete and not self._ready and not self._finishing
                and self._tokens == 0)

    def _raise(self) -> None:
        with self._progress:
            error = self._error
        if error is not None:
            raise error

    def _fail(self, error: BaseException) -> None:
        with self._progress:
            self._error = self._error or error
            self._progress.notify_all()

    # ------------------------------------------------------------------ the threads
    def _next_to_fetch(self) -> tuple[Path, int, int, Any] | None:
        """The first task taken whose data set may be added to now (None: stop), once fewer than ``prefetch``
        fetched partials wait for the adder."""
        with self._progress:
            while True:
                if self._stopping:
                    return None
                if self._in_flight < self._prefetch or self._error is not None:
                    for i, (folder, _, count, _) in enumerate(self._to_fetch):
                        if self._error is not None or not self._large[folder] or self._large_order[:1] == [folder]:
                            self._in_flight += count
                            return self._to_fetch.pop(i)
                self._progress.wait()

    def _fetch_loop(self) -> None:
        while (item := self._next_to_fetch()) is not None:
            folder, start, count, future = item
            results: list = [None] * count
            if self._error is None:
                try:
                    # straight from the worker that holds it (by default the data would pass through the
                    # scheduler, which a local cluster runs in this process: twice the bytes through this
                    # process's event loop; a partial the client cannot reach is gathered by the scheduler)
                    results = self.client.gather(future, direct=True)
                except BaseException as error:  # noqa: BLE001 (raised in the caller's thread)
                    self._fail(error)
            future.release()
            for offset, result in enumerate(results):
                self._to_add.put((folder, start + offset, result))
        self._to_add.put(self._STOP)

    def _add_loop(self) -> None:
        while (item := self._to_add.get()) is not self._STOP:
            try:
                if item[0] is self._FINISHED:
                    with self._progress:
                        self._finishing.discard(item[1])
                    try:
                        if self._error is None:
                            self._start_finish()
                    finally:
                        with self._progress:
                            self._tokens -= 1
                else:
                    folder, position, result = item
                    if position >= 0:
                        with self._progress:
                            self._in_flight -= 1
                    if self._error is None:
                        if position >= 0:
                            self._waiting[folder][position] = result
                        self._add_in_order(folder)
                    else:
                        _discard(result)
                    with self._progress:
                        self._done += 1
            except BaseException as error:  # noqa: BLE001 (raised in the caller's thread)
                self._fail(error)
            with self._progress:
                self._progress.notify_all()

    def _add_in_order(self, folder: Path) -> None:
        # Partials are added in section order whatever order they finish in: floating-point sums depend on the
        # order of their additions, and a run must write the same bytes with one worker or many.
        waiting = self._waiting[folder]
        while self._added[folder] in waiting:
            _add(self.accumulators[folder], waiting.pop(self._added[folder]))
            self._added[folder] += 1
        if self._added[folder] == self._count[folder] and folder in self.accumulators:
            if self.finish is None:
                self._through(folder)
                return
            with self._progress:
                self._ready.append((folder, self.accumulators.pop(folder)))
            self._start_finish()

    def _start_finish(self) -> None:
        """Hand complete data sets to the finisher, at most one large and one small being finished at a time."""
        while True:
            with self._progress:
                busy = {self._large[f] for f in self._finishing}
                chosen = next((i for i, (f, _) in enumerate(self._ready) if self._large[f] not in busy), None)
                if chosen is None:
                    return
                folder, accumulator = self._ready.pop(chosen)
                self._finishing.add(folder)
            self._finisher.submit(self._finish_one, folder, accumulator)
            del accumulator

    def _finish_one(self, folder: Path, accumulator: Any) -> None:
        try:
            self.finish(folder, accumulator)
        except BaseException as error:  # noqa: BLE001 (raised in the caller's thread)
            self._fail(error)
        else:
            with self._progress:
                self._finished.append(folder)
        del accumulator
        self._through(folder)
        with self._progress:
            self._tokens += 1
        self._to_add.put((self._FINISHED, folder))

    def _through(self, folder: Path) -> None:
        """``folder`` is summed (and finished): the next large data set's sections may be fetched."""
        with self._progress:
            if folder in self._large_order:
                self._large_order.remove(folder)
            self._progress.notify_all()


def _large_grid(spec: Any) -> bool:
    """Whether a grid's dense volumes take 64 MB or more each (25 um connectivity grids and finer)."""
    from brainmap.pipeline.grid.resample import POPULATE_BYTES

    return spec is not None and spec.n_voxels * 8 >= POPULATE_BYTES


def _is_large(accumulator: Any) -> bool:
    """Whether an accumulator may grow to whole dense volumes of a large grid (:func:`_large_grid`); ISH
    accumulators and 100 um grids are small."""
    return any(_large_grid(getattr(part, "spec", None)) for part in getattr(accumulator, "parts", [accumulator]))


def _gridder_is_large(gridder: Any) -> bool:
    """Whether a gridder's accumulator is large (:func:`_is_large`), told from its grids without making one (a
    10 um accumulator makes its spill folder)."""
    if getattr(gridder, "lattice", None) is not None:  # ISH: an expression accumulator
        return False
    return any(_large_grid(spec) for spec in [gridder.spec, *(getattr(gridder, "extra_specs", None) or ())])


def grid_sections(client: Any, gridders: dict[Path, Any], *, progress: bool = True,
                  finish: Callable[[Path, Any], None] | None = None, shared_memory: bool | None = None
                  ) -> dict[Path, Any]:
    """Detect and grid every usable section of every data set on a dask.distributed ``client``: one task per run
    of consecutive sections (read their channels, detect, grid), the partial grids summed in section order as
    they arrive (:class:`SectionReduction`).

    Args:
        client: a connected ``distributed.Client``.
        gridders: a :class:`~brainmap.pipeline.grid.Gridder` per data set folder.
        progress: show a progress bar over sections.
        finish: called with a folder and its accumulator as soon as all its sections are in, after which the
            accumulator is dropped.
        shared_memory: workers on this host hand partials over in shared memory (False: in-band; None: unless
            the environment's ``BRAINMAP_HANDOFF`` is ``inband``).

    Returns the accumulator of each folder not handed to ``finish`` (``Gridder.volumes(accumulator)`` makes its
    volumes).
    """
    from distributed import as_completed

    with SectionReduction(client, finish, shared_memory=shared_memory) as reduction:
        futures = []
        for rank, (folder, gridder) in enumerate(gridders.items()):
            # One data set after another (a higher priority runs first), so few accumulators are held at once.
            futures += reduction.submit(folder, gridder, priority=len(gridders) - rank)
        with tqdm(total=sum(map(reduction.sections, gridders)), desc="detect + grid", unit="section",
                  disable=not progress) as bar:
            for future in as_completed(futures):
                bar.update(reduction.take(future))
        for _ in reduction.join():
            pass
    return reduction.accumulators


def _finish_grid(layout: PipelineFolder, gridder, accumulator, expected: str) -> None:
    work = layout.work
    paths = {Path(p).resolve() for p in gridder.write_all(layout.grids, accumulator)}  # data files included
    for stale in set(layout.grids.iterdir()) - paths:  # e.g. another resolution's grids
        if stale.is_file():
            stale.unlink()
    StageRecord("grid", expected, StageRecord.describe_outputs(work, sorted(paths)),
                {"sections": accumulator.sections, "resolution_um": gridder.spec.resolution_um}).write(work)


# --------------------------------------------------------------------------- unionize
def unionize_stage(folder: str | os.PathLike[str]) -> str:
    """Unionize one data set's grids unless done; returns "done" or "skipped". Runs in a Dask worker."""
    from brainmap.atlas.expression_grid import expression_grid_space
    from brainmap.pipeline.unionize import GridFolder, unionize_annotation, unionize_expression, unionize_projection

    layout = PipelineFolder.of(folder)
    folder, work = layout.dataset, layout.work
    dataset = read_dataset(folder, check_files=False)
    expected = _unionize_fingerprint(folder, dataset)
    if stage_is_done(work, "unionize", expected):
        return "skipped"
    if dataset.product == "ish":
        table = unionize_expression(GridFolder(layout.grids, resolution=200), expression_grid_space(),
                                    section_data_set_id=dataset.id)
    else:
        resolution = int(round(StageRecord.read(work, "grid").summary["resolution_um"]))
        grids = GridFolder(layout.grids, resolution=resolution)
        # the bundled annotation at 25-100 um; at 10 um the 25 um one upsampled slab by slab (grids read by slabs)
        table = unionize_projection(grids, unionize_annotation(grids), experiment_id=dataset.id,
                                    pixel_size_um=dataset.pixel_size_um)
    path = layout.unionize
    with atomic_write(path, "w", newline="") as fh:
        table.to_csv(fh, index=False)
    StageRecord("unionize", expected, StageRecord.describe_outputs(work, [path]), {"rows": len(table)}).write(work)
    return "done"


# --------------------------------------------------------------------------- the run
@contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A dask.distributed client: to ``scheduler`` if given, else to a new local cluster of worker processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    with _worker_environment(), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                             dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


#: Section priorities: the first large data set (25 um connectivity), then the small ones (ISH, coarser grids),
#: then the other large ones, each band in the order the data sets were aligned.
_PRIORITY_BAND = 100

#: Unionize tasks run after every section task (lower priority): while sections wait, they are the grid's
#: critical path; after the last one, a worker would otherwise idle while the main process writes grids.
_UNIONIZE_PRIORITY = -1000

#: Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its ``distributed.nanny.pre-spawn-environ``
#: default). Setting any glibc malloc threshold freezes the mmap threshold at 128 KiB, so every numpy array above
#: it is a fresh mmap: its pages are faulted in and zeroed by the kernel on first touch and unmapped when freed.
#: Measured (2026-12-05, the demo's Gad1 data set aligned in one process): 4.7 M minor page faults and 11.1 s of
#: system time with the variable, 0.11 M and 0.7 s without (37 s -> 16 s wall); the whole demo spent more time in
#: the kernel than in Python (sys 133 s, user 129 s). Workers keep Dask's other settings (one BLAS/OpenMP thread).
_MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

#: Dask's settings for the local cluster (its scheduler and nannies in this process; a nanny hands its config to
#: its worker). A local run starts no dashboard, so nothing reads what these periodic callbacks measure for it:
#:
#: * each worker's statistical profiler samples the running task's stack every 10 ms (the dashboard's profile
#:   page). Measured (2026-12-06, the demo's connectivity data set gridded on two workers, three alternating
#:   pairs): 15.7 / 13.9 / 15.0 s of the workers' CPU with it, 13.4 / 13.4 / 11.8 s without;
#: * every server's event-loop tick (20 ms: it warns of a blocked loop), the system monitors (500 ms: CPU, memory,
#:   disk and network counters for the dashboard's plots) and the memory monitors (100 ms: a worker's RSS against
#:   its spill / pause / terminate fractions, read by the worker and by its nanny) -- 1 s, 5 s and 0.5 s here.
#:   Measured (2026-12-07, an idle local cluster of two workers, 30 s, CPU of all three processes, two runs
#:   each): 3.44 / 3.37 CPU-s with Dask's intervals, 0.54 / 0.60 with these, ~0.1 of a core for the whole run;
#:   two demos side by side (one each way, twice): 79.9 / 79.9 s of user CPU against 85.4 / 85.3 s.
_LOCAL_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "500ms",
}


@contextmanager
def _worker_environment() -> Iterator[None]:
    """Start local workers with glibc's own (dynamic) malloc thresholds (see ``_MALLOC_VARIABLES``) and without
    Dask's profiler (``_LOCAL_WORKER_CONFIG``)."""
    import dask

    environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if key not in _MALLOC_VARIABLES}
    # A nanny also writes its variables into this process's environment, where later workers would inherit them.
    saved = {key: os.environ.pop(key) for key in _MALLOC_VARIABLES if key in os.environ}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ, **_LOCAL_WORKER_CONFIG}):
            yield
    finally:
        os.environ.update(saved)


def run_pipeline(
    folders: Sequence[str | os.PathLike[str]],
    settings: RunSettings = RunSettings(),
    *,
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> list[DatasetRun]:
    """Take data set folders through align -> detect -> grid -> unionize (see the module docstring)."""
    from distributed import as_completed

    from brainmap.pipeline.grid import Gridder

    folders = [PipelineFolder.of(f).dataset for f in folders]  # absolute, once: workers share no working directory
    for folder in folders:
        read_dataset(folder)  # fail early, naming the folder, on anything malformed
    runs = {folder: DatasetRun(folder, 0, "") for folder in folders}
    with dask_client(scheduler, workers) as client:
        # Align every data set at once; as soon as one is aligned, its sections are detected and gridded (one
        # task each, after the alignments still waiting: a worker left without a data set to align takes
        # sections) and their partial grids summed as they arrive (in SectionReduction's threads); as soon as a
        # data set's grids are written, it is unionized (after every section: it fills the workers' idle time).
        expected_grid: dict[Path, str] = {}
        gridders: dict[Path, Any] = {}
        unionizing: dict[Any, Path] = {}
        large_first = False  # a large data set's sections submitted

        def finish(folder: Path, accumulator: Any) -> None:  # in the reduction's finishing thread
            _finish_grid(PipelineFolder.of(folder), gridders.pop(folder), accumulator, expected_grid[folder])
            runs[folder].stages["grid"] = "done"

        def unionize(folder: Path) -> None:
            unionizing[client.submit(unionize_stage, str(folder), pure=False, priority=_UNIONIZE_PRIORITY)] = folder

        aligning = {client.submit(align_stage, str(f), settings, pure=False, priority=1): f for f in folders}
        align_bar = tqdm(total=len(folders), desc="align", unit="data set", disable=not progress)
        grid_bar = tqdm(total=0, desc="detect + grid", unit="section", disable=not progress)
        with SectionReduction(client, finish) as reduction:
            done = as_completed(list(aligning))
            for future in done:
                for folder in reduction.finished():
                    unionize(folder)
                if future in reduction:
                    grid_bar.update(reduction.take(future))
                    continue
                folder = aligning.pop(future)
                runs[folder].stages["align"] = future.result()
                align_bar.update()
                if not aligning:
                    align_bar.close()
                dataset = read_dataset(folder)
                run = runs[folder]
                run.dataset_id, run.product = dataset.id, dataset.product
                expected = _grid_fingerprint(folder, dataset, settings)
                if stage_is_done(PipelineFolder.of(folder).work, "grid", expected):
                    run.stages["grid"] = "skipped"
                    unionize(folder)
                    continue
                gridders[folder] = Gridder.for_dataset(dataset, settings.grid_resolution(dataset.product),
                                                       also_um=settings.extra_grid_resolutions_um,
                                                       smoothing=settings.ish_smoothing,
                                                       without_tissue=_without_tissue(PipelineFolder.of(folder)),
                                                       spill_dir=PipelineFolder.of(folder).work)  # 10 um grids
                expected_grid[folder] = expected
                # Data sets in the order they were aligned (earlier ones first), so few accumulators are held; the
                # first large one's sections first, then the small ones', then the other large ones' (all after
                # every alignment waiting): large data sets are summed one at a time, so the next one's sections
                # waited, computed, while the main process wrote the first one's grids; the small ones' sections
                # fill that time instead and the next large one is added as it arrives (round 8).
                large = _gridder_is_large(gridders[folder])
                band = 0 if large and not large_first else (1 if not large else 2)
                large_first = large_first or large
                sections = reduction.submit(folder, gridders[folder],
                                            priority=-len(expected_grid) - band * _PRIORITY_BAND)
                grid_bar.total += reduction.sections(folder)
                grid_bar.refresh()
                done.update(sections)
            align_bar.close()
            grid_bar.close()
            for folder in reduction.join():  # data sets without usable sections included
                unionize(folder)

        # Unionize every data set (most are under way).
        for future in tqdm(as_completed(unionizing), total=len(unionizing), desc="unionize", unit="data set",
                           disable=not progress):
            folder = unionizing[future]
            runs[folder].stages["unionize"] = future.result()
            runs[folder].unionize_path = PipelineFolder.of(folder).unionize

        if settings.channel_volumes:
            from brainmap.pipeline.run.channels_stage import channels_stage

            chosen = [f for f in folders if runs[f].product == "connectivity"]
            futures = {client.submit(channels_stage, str(f), pure=False): f for f in chosen}
            for future in tqdm(as_completed(futures), total=len(futures), desc="channel volumes",
                               unit="data set", disable=not progress):
                runs[futures[future]].stages["channels"] = future.result()
    return [runs[f] for f in folders]


def summarize_runs(runs: Sequence[DatasetRun]) -> str:
    """One line per data set: its id, product and what each stage did."""
    lines = []
    for run in runs:
        stages = ", ".join(f"{name} {what}" for name, what in run.stages.items())
        lines.append(f"{run.product} {run.dataset_id} ({run.folder}): {stages}; rows in {run.unionize_path}")
    return "\n".join(lines)


__all__ = ["DatasetRun", "RunSettings", "SectionReduction", "align_stage", "dask_client", "run_pipeline",
           "summarize_runs",
           "unionize_stage"]
