"""AllenSDK's all-structure voxel counts on the bundled 25 um annotation, for ``bench_atlas``'s comparison.

Run once with AllenSDK 2.16.2's interpreter (a Python 3.11 venv: ``python3.11 -m venv V && V/bin/pip install
allensdk==2.16.2``), from the project root, on a quiet machine::

    V/bin/python benchmarks/allensdk_counts.py

It prints the best of three timings of ``ReferenceSpace.total_voxel_counts()``, each on a new ReferenceSpace
(AllenSDK keeps the direct counts it computed, so a second call on the same object only sums them); the figure is written down in
``bench_atlas.ALLENSDK_TOTAL_COUNTS_S``. It imports nothing of brainmap (AllenSDK's environment has none).
"""

import json
import time
from pathlib import Path

import nrrd
from allensdk.core.reference_space import ReferenceSpace
from allensdk.core.structure_tree import StructureTree

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "brainmap" / "data" / "ccf2017"


def main() -> None:
    annotation, _ = nrrd.read(str(DATA / "annotation_25.nrrd"))
    nodes = json.loads((DATA / "structures.json").read_text())
    nodes = nodes["msg"] if isinstance(nodes, dict) else nodes
    tree = StructureTree(nodes)  # structures.json is already in AllenSDK's cleaned form
    times = []
    for _ in range(3):
        space = ReferenceSpace(tree, annotation, [25, 25, 25])  # fresh: AllenSDK keeps the direct counts
        started = time.perf_counter()
        space.total_voxel_counts()  # fills space.total_voxel_map
        times.append(time.perf_counter() - started)
    counts = space.total_voxel_map
    print(f"AllenSDK {__import__('allensdk').__version__} total_voxel_counts at 25 um: best {min(times):.2f} s "
          f"of {['%.2f' % t for t in times]}; {len(counts)} structures, root {counts.get(997)}")


if __name__ == "__main__":
    main()
