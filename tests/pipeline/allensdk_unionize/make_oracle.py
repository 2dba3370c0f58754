"""Write AllenSDK 2.16.2's projection unionize rows for the recipe's cases (run in the AllenSDK virtual environment).

    /work/allensdk-venv/bin/python tests/pipeline/allensdk_unionize/make_oracle.py

For each case of ``recipe.CASES`` this reads the bundled CCF 2017 annotation and ontology, builds the grid volumes
with ``recipe.make_grids`` and runs AllenSDK's ``TissuecyteUnionizer`` the way its
``run_tissuecyte_unionize_classic.run`` does (annotation negated left of ``round(n_lr / 2)``, zeroed where
``data_mask`` is 0; exclusion binarized at > 0; interval map, direct unionize, propagation to ancestors, then to
both hemispheres, post-processing). That script is Python 2 (``import data_utilities``, ``map``/``filter``
iterators), so its dozen lines of orchestration are repeated here with lists; every computation is AllenSDK's.
The rows go to ``tests/data/allensdk_unionize/rows_{case}.csv.gz`` with ``repr`` floats.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import allensdk
import nrrd
import numpy as np
from allensdk.core.simple_tree import SimpleTree
from allensdk.internal.mouse_connectivity.interval_unionize.tissuecyte_unionizer import TissuecyteUnionizer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DATA = ROOT / "src" / "brainmap" / "data" / "ccf2017"
OUT = ROOT / "tests" / "data" / "allensdk_unionize"

spec = importlib.util.spec_from_file_location("unionize_recipe", HERE / "recipe.py")
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)

COLUMNS = [
    "is_injection", "hemisphere_id", "structure_id", "sum_pixels", "sum_projection_pixels",
    "sum_projection_pixel_intensity", "sum_pixel_intensity", "projection_density", "projection_energy",
    "projection_intensity", "volume", "projection_volume", "normalized_projection_volume", "max_voxel_density",
    "max_voxel_x", "max_voxel_y", "max_voxel_z",
]


def ancestor_id_map(structures: list[dict]) -> dict[int, list[int]]:
    """As ``run_tissuecyte_unionize_classic.get_ancestor_id_map``, with lists instead of ``map`` iterators."""
    nodes = [{"id": s["id"], "parent_structure_id": (s["structure_id_path"][-2] if len(s["structure_id_path"]) > 1
                                                      else None)} for s in structures]
    tree = SimpleTree(nodes, lambda st: int(st["id"]), lambda st: st["parent_structure_id"])
    out = tree.value_map(lambda st: st["id"], lambda st: tree.ancestor_ids([st["id"]])[0])
    for k in list(out):
        out[-k] = [-x for x in out[k]]
    return out


def check_recipe_avoids_sort_order(raw: dict) -> None:
    """Fail where AllenSDK's answer would depend on np.argsort's unstable order (see recipe.py)."""
    for sid, records in raw.items():
        for kind, record in records.items():
            if record.sum_projection_pixels > 0 and record.max_voxel_density <= 0:
                raise SystemExit(f"{kind} record of {sid}: projection pixels but no positive density")
            if record.sum_projection_pixels > 0 and record.max_voxel_index == 0:
                raise SystemExit(f"{kind} record of {sid}: max voxel at sorted position 0")


def run_case(case: str, structures: list[dict]) -> list[dict]:
    resolution, _ = recipe.CASES[case]
    annotation_full, _ = nrrd.read(str(DATA / f"annotation_{resolution}.nrrd"))
    annotation = recipe.crop(np.ascontiguousarray(annotation_full), case)
    grids = recipe.make_grids(annotation, resolution)

    # du.load_annotation
    signed = annotation.astype(np.int32)
    lr_mid = int(np.round(signed.shape[2] / 2))
    signed[:, :, :lr_mid] = signed[:, :, :lr_mid] * -1
    signed[np.logical_not(grids["data_mask"])] = 0

    unionizer = TissuecyteUnionizer()
    unionizer.setup_interval_map(signed)
    exclusion = grids["aav_exclusion_fraction"].copy()
    exclusion[exclusion > 0] = 1
    arrays = {name: grids[name] for name in recipe.GRID_NAMES if name not in ("data_mask", "aav_exclusion_fraction")}
    arrays["aav_exclusion_fraction"] = exclusion.astype(bool, order="C")
    arrays = {k: v.flat[unionizer.sort] for k, v in arrays.items()}

    raw = unionizer.direct_unionize(arrays, pre_sorted=True)
    check_recipe_avoids_sort_order(raw)
    raw = TissuecyteUnionizer.propagate_unionizes(raw, ancestor_id_map(structures))
    bilateral = TissuecyteUnionizer.propagate_to_bilateral(raw)
    common = dict(image_series_id=1, output_spacing_iso=resolution,
                  volume_scale=0.35**2 * 1e-9 * resolution,  # get_volume_scale(0.35 um pixels, spacing)
                  target_shape=signed.shape, sort=unionizer.sort)
    rows = list(unionizer.postprocess_unionizes(raw, **common))
    for item in unionizer.postprocess_unionizes(bilateral, **common):
        item["hemisphere_id"] = 3
        rows.append(item)
    return rows


def main() -> None:
    structures = json.loads((DATA / "structures.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    for case in recipe.CASES:
        rows = run_case(case, structures)
        rows.sort(key=lambda r: (not r["is_injection"], r["hemisphere_id"], r["structure_id"]))
        path = OUT / f"rows_{case}.csv.gz"
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(f"# AllenSDK {allensdk.__version__} TissuecyteUnionizer, numpy {np.__version__}, "
                         f"python {sys.version.split()[0]}; recipe case {case}\n")
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for r in rows:
                writer.writerow([int(r["is_injection"]), r["hemisphere_id"], r["structure_id"]]
                                + [repr(float(r[c])) for c in COLUMNS[3:]])
        print(f"{case}: {len(rows)} rows -> {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
