"""``brainmap demo``: the main job on the bundled data.

Today it loads the bundled CCF 2017 atlas, prints a summary of it (shape, resolution, structures, the volume of
the brain and of its major divisions per hemisphere) and writes a coronal and a sagittal annotation slice as
PNG, plus the summary table as CSV. Later stages of the pipeline grow into it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.io.atomic import atomic_write
from brainmap.io.png import write_png

#: Structure set "Brain - Major Divisions" (12 structures: isocortex, olfactory areas, hippocampal formation, ...).
MAJOR_DIVISIONS_SET = 687527670

#: Where the demo cuts: a coronal plane through the dorsal hippocampus, a sagittal one through the left
#: hemisphere (um from the volume's anterior and left faces).
CORONAL_POSITION_UM = 7000.0
SAGITTAL_POSITION_UM = 4000.0


def major_division_volumes(space: ReferenceSpace) -> pd.DataFrame:
    """Volume in mm3 of the root and of each major division, left, right and both hemispheres."""
    tree: StructureTree = space.structure_tree
    divisions = sorted(tree.get_structures_by_set_id([MAJOR_DIVISIONS_SET]), key=lambda n: n["graph_order"])
    ids = [997] + [int(n["id"]) for n in divisions]
    voxel_mm3 = float(space.resolution.prod()) * 1e-9
    counts = {h: space.total_voxel_counts(h) for h in (1, 2, 3)}
    nodes = tree.get_structures_by_id(ids)
    return pd.DataFrame(
        {
            "structure_id": ids,
            "acronym": [n["acronym"] for n in nodes],
            "name": [n["name"] for n in nodes],
            "left_mm3": [counts[1].loc[s] * voxel_mm3 for s in ids],
            "right_mm3": [counts[2].loc[s] * voxel_mm3 for s in ids],
            "volume_mm3": [counts[3].loc[s] * voxel_mm3 for s in ids],
        }
    )


def run_demo(out: str | Path, resolution: int = 25, annotation: str | Path | None = None) -> dict[str, Path]:
    """Run the demo, writing into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    space = ReferenceSpace.from_files(annotation) if annotation is not None else ReferenceSpace.bundled(resolution)
    labels = space.direct_voxel_counts()
    present = int((labels > 0).sum())
    res = "x".join(f"{r:g}" for r in space.resolution)
    print("brainmap demo: the Allen CCF v3 (2017) reference space")
    print(f"  annotation  {' x '.join(map(str, space.shape))} voxels (AP x DV x LR) at {res} um")
    print(f"  ontology    {len(space.structure_tree)} structures; {present} label the annotation directly")
    table = major_division_volumes(space)
    print(table.to_string(index=False, float_format=lambda v: f"{v:8.2f}"))
    written = {
        "coronal": write_png(out / "annotation_coronal.png", space.get_slice_image("coronal", CORONAL_POSITION_UM)),
        "sagittal": write_png(out / "annotation_sagittal.png", space.get_slice_image("sagittal", SAGITTAL_POSITION_UM)),
    }
    with atomic_write(out / "major_divisions.csv", "w", newline="") as fh:
        table.to_csv(fh, index=False)
    written["summary"] = out / "major_divisions.csv"
    for name, path in written.items():
        print(f"  wrote {path}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return written
