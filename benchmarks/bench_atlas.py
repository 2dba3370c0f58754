"""The reference space on the 25 um annotation: label index, root mask, voxel counts, peak memory.

Targets (issue 2, this 2-core machine): building the label index <= 3 s; the root mask (all 1,300+ descendants)
<= 0.3 s; direct and total voxel counts of all structures <= 1.5 s; peak memory <= 3x the annotation array.
Issue 18: the total voxel counts of every structure (one pass over the compact labels, a prefix sum) <= 0.25 s,
>= 20x AllenSDK's ``ReferenceSpace.total_voxel_counts()`` on the same annotation (:data:`ALLENSDK_TOTAL_COUNTS_S`).
For scale, the common approach -- one full-volume comparison per descendant -- is timed on a sample of
descendants in the same run and extrapolated to all of them.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from benchmarks.report import Figure, best_of
from brainmap.atlas import ReferenceSpace, StructureTree, bundled
from brainmap.atlas.label_index import LabelIndex
from brainmap.io.nrrd import read_nrrd

#: AllenSDK 2.16.2's ``ReferenceSpace(tree, annotation_25, [25] * 3).total_voxel_counts()`` on the bundled 25 um
#: annotation, each on a new ReferenceSpace, best of 3, in a Python 3.11 venv with ``pip install
#: allensdk==2.16.2``, this machine, quiet, 2026-12-05: 12.59 s (13.19, 12.59, 12.69).
#: ``benchmarks/allensdk_counts.py`` (run with that venv's python) prints it. (Issue 18 quoted 5.5 s.)
ALLENSDK_TOTAL_COUNTS_S = 12.59


def run() -> list[Figure]:
    tree = StructureTree.bundled()
    tracemalloc.start()
    annotation, _ = read_nrrd(bundled.annotation_path(25))
    space = ReferenceSpace(tree, annotation, 25)
    order = space.ontology_order
    build_s, _ = best_of(lambda: LabelIndex(annotation, order), repeat=2)
    space.label_index  # the space's own, kept
    root_s, _ = best_of(lambda: space.make_structure_mask([997]), repeat=5)

    def all_counts():
        space.direct_voxel_counts()
        space.total_voxel_counts()

    counts_s, _ = best_of(all_counts, repeat=3)
    space.total_voxel_counts()  # compiled and warm
    total_s, _ = best_of(space.total_voxel_counts, repeat=5)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    descendants = tree.descendant_ids([997])[0]
    sample = descendants[:: max(1, len(descendants) // 25)]
    started = time.perf_counter()
    naive = np.zeros_like(annotation, dtype=bool)  # same (Fortran) memory order as the annotation
    for sid in sample:
        naive |= annotation == sid
    naive_s = (time.perf_counter() - started) * len(descendants) / len(sample)

    return [
        Figure("label index build (25 um, 77 M voxels)", build_s, 3.0, "s"),
        Figure("root mask (with all 1,327 structures)", root_s, 0.3, "s"),
        Figure("direct + total voxel counts of every structure", counts_s, 1.5, "s"),
        Figure("total voxel counts of every structure (25 um)", total_s, 0.25, "s"),
        Figure("speed-up over AllenSDK's total_voxel_counts", ALLENSDK_TOTAL_COUNTS_S / total_s, 20.0, "x",
               better="higher", note=f"AllenSDK {ALLENSDK_TOTAL_COUNTS_S:g} s (benchmarks/allensdk_counts.py)"),
        Figure("peak traced memory / annotation array", peak / annotation.nbytes, 3.0, "x",
               note=f"peak {peak / 2**20:.0f} MiB, annotation {annotation.nbytes / 2**20:.0f} MiB, loading included"),
        Figure("naive root mask, one pass per descendant", naive_s, None, "s",
               note=f"extrapolated from {len(sample)} of {len(descendants)} passes"),
        Figure("speed-up of the root mask over the naive way", naive_s / root_s, None, "x"),
    ]
