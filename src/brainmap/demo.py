"""``brainmap demo``: the main job on the bundled data.

1. Loads the bundled CCF 2017 atlas and prints a summary of it (shape, resolution, structures, the volume of the
   brain and of its major divisions per hemisphere); writes a coronal and a sagittal annotation slice as PNG.
2. Makes a handful of virtual specimens with the virtual microscope: connectivity experiments from the real
   Knox 2019 / Oh 2014 tables and ISH genes from Allen's P56 ISH table.
3. Runs the whole pipeline on them (align -> detect -> grid -> unionize; resumable, Dask).
4. Prints and writes a summary -- for each experiment its top target structures, for each gene its top
   structures -- and a figure: the maximum-intensity projection of each experiment's projection density over
   the outline of the annotation, seen from above (title, colour bar in units, orientation, scale bar).
5. Ends with the commands that load what it made into a data directory, serve it and search it.

Everything the pipeline measured comes from synthetic images, and the demo says so wherever it prints or draws a
result: the connectivity specimens follow real experiments' projection volumes, but the ISH genes' patterns are
the virtual microscope's, drawn at random per gene symbol (``docs/virtual-microscope.md``).

Everything is written into ``out``; a second run reuses the specimens and skips the pipeline stages that are done.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.figures import Colorbar, heat_colormap, write_figure
from brainmap.io.atomic import atomic_write
from brainmap.pipeline.run import RunSettings

#: Structure set "Brain - Major Divisions" (12 structures: isocortex, olfactory areas, hippocampal formation, ...).
MAJOR_DIVISIONS_SET = 687527670

#: Where the demo cuts: a coronal plane through the dorsal hippocampus, a sagittal one through the left
#: hemisphere (um from the volume's anterior and left faces).
CORONAL_POSITION_UM = 7000.0
SAGITTAL_POSITION_UM = 4000.0

#: The demo's specimens: real connectivity experiments (injections in entorhinal area and primary visual cortex)
#: and ISH genes: one sagittal, three coronal (each of Allen's expression search sets, sagittal ``mouse`` and
#: coronal ``mouse_coronal``, has rows; AGEA needs three data sets with data at its seed).
DEMO_EXPERIMENTS = (112672974, 100141219)
DEMO_GENES = (("Pvalb", "sagittal"), ("Calb1", "coronal"), ("Gad1", "coronal"), ("Slc17a7", "coronal"))
#: Picture zoom: each 100 um voxel of a top view is drawn as ZOOM x ZOOM pixels.
ZOOM = 4
SYNTHETIC_NOTE = "synthetic: the virtual microscope's images, not Allen's"
#: Coarse pixels keep the demo to minutes on two cores (the defaults are 10 and 8 um).
DEMO_PIXEL_SIZE_UM = {"connectivity": 50.0, "ish": 40.0}
#: The pipeline's settings for the demo's specimens.
# The demo's specimens are drawn in the template's Nissl-like contrast and without a non-linear warp, so
# the template similarity and the affine stages are what they need. Measured on this 2-core machine in a
# fresh clone, the contrast-agnostic default made the demo take 158 s, its alignment 117 s of it; the
# template path aligns this appearance better too (9 / 22 um median / p95 against 22 / 60 um, issue 13's
# measurement). Real images of any stain get the default (brainmap run, brainmap align).
# The connectivity grids are written at 25 um too, as Allen serves them (AllenSDK's documented example
# asks MouseConnectivityCache(resolution=25) for a projection density); the unionizer reads the 100 um.
# The first alignment round skips one smoothing level in 3-D (200 um) and one in 2-D (100 um): measured on
# the demo's six data sets against their truth (issue 18, round 4; one process each, loaded machine),
# alignment CPU 45.6 -> 41.7 s, error 44.5/52.4 -> 44.4/52.0 um median/p95 (mostly a constant ~43 um
# offset, half a 50 um voxel on each axis; without it 6.8/15.9 -> 6.5/15.7 um). Real data keep all levels.
# Round 6: the first 2-D refinement also stops at 50 um smoothing (the second refines the same 50 um sections
# unsmoothed): with the aligner's fewer points in its early rounds, 33.0 -> 30.7 s CPU for the six data sets,
# error without the offset 6.38/15.38 -> 6.70/15.82 um (6.48/15.69 before round 6); docs/performance-demo.md.
DEMO_SETTINGS = RunSettings(reference_resolution_um=50, grid_resolution_um=100, nonlinear=False, contrast="template",
                            extra_grid_resolutions_um=(25,),
                            first_alignment_levels_um=((400.0, 100.0, 0.0), (200.0, 50.0)))


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


def top_structures(unionizes: pd.DataFrame, tree: StructureTree, metric: str, n: int = 10,
                   hemispheres: tuple[int, ...] = (1, 2)) -> pd.DataFrame:
    """The ``n`` summary structures (per hemisphere, where the rows have one: Allen's ISH rows do not) with the
    largest ``metric``, projection rows only."""
    keep = unionizes.structure_id.isin(tree.summary_structure_ids())
    by_hemisphere = "hemisphere_id" in unionizes
    if by_hemisphere:
        keep &= unionizes.hemisphere_id.isin(hemispheres)
    rows = unionizes[keep]
    if "is_injection" in rows:
        rows = rows[~rows.is_injection.astype(bool)]
    top = rows.nlargest(n, metric)[["structure_id", *(["hemisphere_id"] if by_hemisphere else []), metric]].copy()
    top.insert(1, "acronym", top.structure_id.map(tree.get_acronym_map()))
    return top.reset_index(drop=True)


def top_view_outline(space: ReferenceSpace) -> np.ndarray:
    """(AP, LR) bool: edges between major divisions on the brain's dorsal surface, and the brain's outline."""
    tree = space.structure_tree
    division_of = np.zeros(len(space.ontology_order) + 1, dtype=np.int16)
    for k, node in enumerate(tree.get_structures_by_set_id([MAJOR_DIVISIONS_SET]), start=1):
        position = space.ontology_order.position[int(node["id"])]
        division_of[position + 1 : position + 1 + space.ontology_order.subtree_size[position]] = k
    compact = space.label_index.compact
    inside = compact != 0
    top = np.argmax(inside, axis=1)  # first labelled voxel from the dorsal side, per (AP, LR) column
    surface = np.take_along_axis(compact, top[:, None, :], axis=1)[:, 0, :]
    labels = np.where(inside.any(axis=1), division_of[surface] + 1, 0)
    edges = np.zeros(labels.shape, dtype=bool)
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edges


#: The top views' colour scale: t ** GAMMA of the density over the colour bar's top.
GAMMA = 0.5


def projection_picture(density: np.ndarray, outline: np.ndarray, zoom: int = ZOOM) -> tuple[np.ndarray, float]:
    """RGB (AP, LR) uint8: the max-intensity projection (over DV) of ``density`` in a heat scale (``t ** 0.5`` of
    the density over its 99.5th percentile), outline in light grey, each voxel drawn as ``zoom`` x ``zoom`` pixels;
    and the density at the top of the scale."""
    mip = np.max(np.where(density > 0, density, 0.0), axis=1)
    scale = float(np.quantile(mip[mip > 0], 0.995)) if np.any(mip > 0) else 1.0
    picture = heat_colormap(np.clip(mip / scale, 0, 1) ** GAMMA)
    picture[outline] = 217
    return np.repeat(np.repeat(picture, zoom, axis=0), zoom, axis=1), scale


def _atlas_summary(space: ReferenceSpace, out: Path) -> dict[str, Path]:
    labels = space.direct_voxel_counts()
    res = "x".join(f"{r:g}" for r in space.resolution)
    print("brainmap demo: the Allen CCF v3 (2017) reference space")
    print(f"  annotation  {' x '.join(map(str, space.shape))} voxels (AP x DV x LR) at {res} um")
    print(f"  ontology    {len(space.structure_tree)} structures; {int((labels > 0).sum())} label the annotation directly")
    table = major_division_volumes(space)
    print(table.to_string(index=False, float_format=lambda v: f"{v:8.2f}"))
    pixel_um = float(space.resolution[0])
    written = {
        "coronal": write_figure(out / "annotation_coronal.png", space.get_slice_image("coronal", CORONAL_POSITION_UM),
                                title=f"CCF 2017 annotation, coronal plane at {CORONAL_POSITION_UM:g} um",
                                subtitle="structures in the ontology's colours", pixel_size_um=pixel_um,
                                orientation={"top": "dorsal", "bottom": "ventral", "left": "L", "right": "R"}),
        "sagittal": write_figure(out / "annotation_sagittal.png",
                                 space.get_slice_image("sagittal", SAGITTAL_POSITION_UM),
                                 title=f"CCF 2017 annotation, sagittal plane at {SAGITTAL_POSITION_UM:g} um",
                                 subtitle="left hemisphere; structures in the ontology's colours",
                                 pixel_size_um=pixel_um,
                                 orientation={"top": "dorsal", "bottom": "ventral", "left": "anterior",
                                              "right": "posterior"}),
    }
    with atomic_write(out / "major_divisions.csv", "w", newline="") as fh:
        table.to_csv(fh, index=False)
    written["major_divisions"] = out / "major_divisions.csv"
    return written


def specimen_seed(name: str) -> int:
    """The seed of the demo's specimen in the folder ``name``: a CRC-32 of the name, so each specimen is its own
    draw (pose, sections, damage, texture, noise) and the same one on every run."""
    return zlib.crc32(name.encode("utf-8"))


def _make_one_specimen(product: str, target: str, what: dict) -> str:
    from brainmap.specimen.synthetic import make_specimen

    make_specimen(product, target, pixel_size_um=DEMO_PIXEL_SIZE_UM[product], truth_resolution_um=100,
                  overwrite=True, seed=specimen_seed(Path(target).name), **what)
    return target


def _make_specimens(folder: Path, client=None) -> list[Path]:
    """The demo's virtual specimens (kept between runs: a folder with its dataset.json is complete), made on the
    Dask ``client``'s workers when given (the specimens are independent; the largest are started first)."""
    plans = [("connectivity", f"connectivity_{e}", {"experiment_id": e}) for e in DEMO_EXPERIMENTS]
    plans += [("ish", f"ish_{g}_{plane}", {"gene": g, "plane": plane}) for g, plane in DEMO_GENES]
    folder = folder.resolve()  # workers share no working directory
    folders, futures = [], []
    for rank, (product, name, what) in enumerate(plans):
        target = folder / name
        if not (target / "dataset.json").exists():
            if client is None:
                _make_one_specimen(product, str(target), what)
            else:
                futures.append(client.submit(_make_one_specimen, product, str(target), what, pure=False,
                                             priority=len(plans) - rank))
        folders.append(target)
    for future in futures:
        future.result()
    return folders


def _pipeline_summary(folders: list[Path], tree: StructureTree, out: Path) -> dict[str, Path]:
    from brainmap.io.nrrd import read_nrrd
    from brainmap.pipeline.run.layout import PipelineFolder
    from brainmap.specimen.folder import read_dataset

    space100 = ReferenceSpace.bundled(100)
    outline = top_view_outline(space100)
    tables, written = [], {}
    for folder in folders:
        dataset = read_dataset(folder, check_files=False)
        layout = PipelineFolder.of(folder)
        unionizes = pd.read_csv(layout.unionize)
        if dataset.product == "connectivity":
            top = top_structures(unionizes, tree, "normalized_projection_volume")
            injection = dataset.metadata.get("structure_abbrev", "?")
            what = (f"experiment {dataset.id} ({injection} injection; {SYNTHETIC_NOTE}, rendered from the real "
                    "experiment's projection volumes)")
            density, _ = read_nrrd(layout.grid_file("projection_density_100.nrrd"))
            picture, scale = projection_picture(density, outline)
            written[f"projection_{dataset.id}"] = write_figure(
                out / f"projection_density_top_view_{dataset.id}.png", picture,
                title=f"Projection density, experiment {dataset.id} ({injection} injection), top view",
                subtitle=f"maximum over depth; {SYNTHETIC_NOTE}", pixel_size_um=100.0 / ZOOM,
                colorbar=Colorbar(0.0, scale, "projection density (fraction of voxel)", gamma=GAMMA),
                orientation={"top": "anterior", "bottom": "posterior", "left": "L", "right": "R"})
        else:
            top = top_structures(unionizes, tree, "expression_energy")
            gene = dataset.metadata.get("gene", "?")
            what = (f"gene {gene} (data set {dataset.id}, {dataset.plane}; {SYNTHETIC_NOTE}: a random pattern "
                    f"drawn for the symbol, not {gene}'s real expression)")
        print(f"\n  top structures of {what}:")
        print(top.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        top.insert(0, "section_data_set_id", dataset.id)
        top.insert(1, "product", dataset.product)
        top.insert(2, "synthetic", True)
        tables.append(top.rename(columns={"normalized_projection_volume": "value", "expression_energy": "value"}))
    with atomic_write(out / "top_structures.csv", "w", newline="") as fh:
        pd.concat(tables, ignore_index=True).to_csv(fh, index=False)
    written["top_structures"] = out / "top_structures.csv"
    return written


def run_demo(out: str | Path, resolution: int = 25, annotation: str | Path | None = None, *,
             specimens: bool = True, workers: int = 2, scheduler: str | None = None) -> dict[str, Path]:
    """Run the demo, writing into ``out``; returns the paths written (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    space = ReferenceSpace.from_files(annotation) if annotation is not None else ReferenceSpace.bundled(resolution)
    written = _atlas_summary(space, out)
    if specimens:
        from brainmap.pipeline.run import run_pipeline, summarize_runs
        from brainmap.pipeline.run.runner import dask_client

        print("\nmaking virtual specimens (connectivity experiments %s; ISH genes %s)"
              % (", ".join(map(str, DEMO_EXPERIMENTS)), ", ".join(f"{g} {p}" for g, p in DEMO_GENES)))
        # One Dask cluster makes the specimens (in parallel) and runs the pipeline on them.
        with dask_client(scheduler, workers) as client:
            folders = _make_specimens(out / "specimens", client)
            print("running the pipeline: align -> detect -> grid -> unionize")
            runs = run_pipeline(folders, DEMO_SETTINGS, scheduler=client.scheduler.address)
        print(summarize_runs(runs))
        written.update(_pipeline_summary(folders, space.structure_tree, out))
    for path in written.values():
        print(f"  wrote {path}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    if specimens:
        print(next_steps(out))
    return written


def next_steps(out: str | Path) -> str:
    """The commands that take what the demo made further: load, serve, search (``out`` as the user gave it)."""
    specimens = Path(out) / "specimens"
    return "\n".join([
        "\nnext: load the results into a data directory (with its database and search stores), then serve and search:",
        f"  brainmap load {specimens} --data-dir brainmap-data",
        "  brainmap serve --data-dir brainmap-data          # the portal at http://127.0.0.1:8000/ and the Allen API",
        "  brainmap search source --injection-structures VISp --data-dir brainmap-data",
    ])
