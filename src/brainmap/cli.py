"""The ``brainmap`` command.

    brainmap demo [--out DIR]                       the main job on the bundled data
    brainmap info                                   what is bundled, versions
    brainmap atlas structure QUERY                  look up a structure by id, acronym or name
    brainmap atlas slice --plane P --position UM    write an annotation slice as PNG
    brainmap atlas mask STRUCTURE... --out F.nrrd   export a structure mask as NRRD
    brainmap specimen make --product P ... --out DIR  make a virtual specimen with known truth
    brainmap align DIR                              align a data set to the reference
    brainmap run DIR...                             align -> detect -> grid -> unionize (resumable, Dask)
    brainmap unionize GRID_DIR                      per-structure unionize of grid volumes (Allen's rows)
    brainmap load DIR... --data-dir D               copy results into a data directory, load its database and
                                                    build its search stores
    brainmap serve --data-dir D                     the HTTP API (RMA, services, downloads, sync, viewer)
    brainmap search SERVICE ... --data-dir D        a search service (differential, correlation, agea, source,
                                                    target, spatial, injection-coordinate,
                                                    connectivity-correlation) on a data directory
    brainmap search lines GRID_DIR --out F.json     spatial search lines of an experiment

Errors in the input (an unknown structure, a bad file) print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from brainmap.errors import BrainmapError


def _add_space_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resolution", type=int, default=25, help="bundled annotation resolution in um: 25, 50 or 100 (default 25)"
    )
    parser.add_argument("--annotation", type=Path, help="an annotation NRRD to use instead of the bundled one")


def _reference_space(args: argparse.Namespace):
    from brainmap.atlas import ReferenceSpace

    if args.annotation is not None:
        return ReferenceSpace.from_files(args.annotation)
    return ReferenceSpace.bundled(args.resolution)


def build_parser(services: bool = True) -> argparse.ArgumentParser:
    """The ``brainmap`` parser; ``services=False`` leaves out the ``search`` services' sub-commands, whose options
    come from the server's service table (importing the server costs about 2 s, which other commands need not
    pay)."""
    from brainmap import __version__

    parser = argparse.ArgumentParser(prog="brainmap", description="Spatially mapped mouse brain data (Allen CCF v3).")
    parser.add_argument("--version", action="version", version=f"brainmap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="load the bundled atlas, summarize it, write slice pictures")
    demo.add_argument("--out", type=Path, default=Path("brainmap-demo"), help="output folder (default ./brainmap-demo)")
    demo.add_argument("--atlas-only", action="store_true", help="only the atlas summary and slices (seconds)")
    demo.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    demo.add_argument("--scheduler", help="address of a dask.distributed scheduler (default: a local cluster)")
    _add_space_options(demo)
    demo.set_defaults(run=_run_demo)

    info = commands.add_parser("info", help="what is bundled, and versions")
    info.set_defaults(run=_run_info)

    atlas = commands.add_parser("atlas", help="the structure ontology and the reference space")
    atlas_commands = atlas.add_subparsers(dest="atlas_command", required=True, metavar="ATLAS_COMMAND")

    structure = atlas_commands.add_parser("structure", help="look up a structure by id, acronym or name")
    structure.add_argument("query", help="structure id, acronym (e.g. VISp) or full name")
    _add_space_options(structure)
    structure.set_defaults(run=_run_structure)

    slice_ = atlas_commands.add_parser("slice", help="write an annotation slice image as PNG")
    slice_.add_argument("--plane", choices=["coronal", "horizontal", "sagittal"], default="coronal",
                        help="plane of the slice (default coronal)")
    slice_.add_argument("--position", type=float, required=True, help="position along the plane's axis in um")
    slice_.add_argument("--out", type=Path, required=True, help="PNG file to write")
    _add_space_options(slice_)
    slice_.set_defaults(run=_run_slice)

    mask = atlas_commands.add_parser("mask", help="export a structure mask (with descendants) as NRRD")
    mask.add_argument("structures", nargs="+", help="structure ids or acronyms")
    mask.add_argument("--out", type=Path, required=True, help="NRRD file to write (uint8, 1 inside)")
    mask.add_argument("--direct-only", action="store_true", help="only voxels labelled with the structures themselves")
    _add_space_options(mask)
    mask.set_defaults(run=_run_mask)
    specimen = commands.add_parser("specimen", help="section data sets: the virtual microscope")
    specimen_commands = specimen.add_subparsers(dest="specimen_command", required=True, metavar="SPECIMEN_COMMAND")
    make = specimen_commands.add_parser("make", help="make a virtual specimen with known ground truth")
    make.add_argument("--product", choices=["connectivity", "ish"], required=True,
                      help="connectivity (serial two-photon, coronal) or ish (in situ hybridization)")
    make.add_argument("--experiment", type=int, help="connectivity: a real experiment id (e.g. 112672974)")
    make.add_argument("--gene", help="ISH: a gene symbol from the ISH experiments table (e.g. Pvalb)")
    make.add_argument("--plane", choices=["coronal", "sagittal"], help="default coronal (sagittal: ISH only)")
    make.add_argument("--pixel-size", type=float, help="image pixel size in um (default 10 connectivity, 8 ISH)")
    make.add_argument("--seed", type=int, default=0,
                      help="random seed of the specimen's geometry, damage and noise (default 0)")
    make.add_argument("--truth-resolution", type=int, default=25, choices=[25, 50, 100],
                      help="voxel size in um of the ground-truth volumes written to truth/ (default 25)")
    make.add_argument("--no-damage", action="store_true", help="no missing, failed, torn or bubbled sections")
    make.add_argument("--alignment", choices=["none", "2d", "all"], default="none",
                      help="true transforms to store in dataset.json: none (default; for the aligner), 2d, or all")
    make.add_argument("--overwrite", action="store_true", help="replace an existing data set folder")
    make.add_argument("--appearance", choices=["nissl", "fluorescence", "brightfield", "rgb"], default="nissl",
                      help="tissue channel look: nissl (the aligner's template; default) or one sharing nothing "
                           "with it")
    make.add_argument("--warp", action="store_true", help="a smooth non-linear deformation (100-300 um) on top "
                      "of the affine, and folds")
    make.add_argument("--out", type=Path, required=True, help="data set folder to write")
    make.set_defaults(run=_run_specimen_make)

    imp = specimen_commands.add_parser("import", help="a data set folder from your own section images or a 3-D "
                                       "stack")
    imp.add_argument("sources", nargs="+", type=Path, help="image files and/or folders (TIFF, PNG, JPEG); with "
                     "--stack one multi-page TIFF, folder of planes, NRRD or NIfTI")
    imp.add_argument("--out", type=Path, required=True, help="data set folder to write")
    imp.add_argument("--stack", action="store_true", help="the source is one 3-D stack")
    imp.add_argument("--orientation", help="stack: brainglobe's three letters, where each axis starts (e.g. psl)")
    imp.add_argument("--voxel-size", type=float, nargs="+", help="stack: voxel size(s) in um (1 or 3 values); "
                     "default from the file's header")
    imp.add_argument("--pixel-size", type=float, help="2-D images: pixel size in um")
    imp.add_argument("--section-thickness", type=float, help="2-D images: physical section thickness in um "
                     "(section n lies at n x thickness)")
    imp.add_argument("--sampling", type=float, help="2-D images: distance between imaged sections in um "
                     "(default from the section numbers)")
    imp.add_argument("--plane", choices=["coronal", "sagittal"], default="coronal",
                     help="plane of section (default coronal)")
    imp.add_argument("--product", choices=["ish", "connectivity"], default="ish",
                     help="ish (default) or connectivity")
    imp.add_argument("--stain", choices=["brightfield", "fluorescence"], help="default: detected")
    imp.add_argument("--numbers", choices=["auto", "name", "order"], default="auto",
                     help="section numbers from the file names or their order (auto: names when all have one)")
    imp.add_argument("--id", type=int, help="data set id (default: from the file names)")
    imp.add_argument("--pad", action="store_true", help="put images of different sizes on one canvas")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing data set folder")
    imp.set_defaults(run=_run_specimen_import)

    align = commands.add_parser("align", help="align a section data set to the reference (Alignment2d, Alignment3d)")
    align.add_argument("dataset_dir", type=Path, help="data set folder (dataset.json + images/)")
    align.add_argument("--reference-resolution", type=int, default=25, choices=[25, 50, 100],
                       help="voxel size in um of the template the sections are registered to (default 25)")
    align.add_argument("--template", type=Path, help="a template volume in the CCF (NRRD at the reference "
                       "resolution, e.g. Allen's average_template_25.nrrd); default: a cached average template "
                       "($BRAINMAP_TEMPLATE_DIR or ~/.cache/brainmap), else the annotation-derived one (kept there "
                       "once made)")
    align.add_argument("--contrast", choices=["model", "template"], default="model",
                       help="model (default): the specimen's own per-structure intensity model, any stain; "
                            "template: the template's values (a specimen of the same contrast)")
    align.add_argument("--affine-only", action="store_true", help="no non-linear stage after the affine")
    align.set_defaults(run=_run_align)

    run = commands.add_parser("run", help="take data sets through align -> detect -> grid -> unionize")
    run.add_argument("dataset_dirs", nargs="+", type=Path, help="data set folders (dataset.json + images/)")
    run.add_argument("--scheduler", help="address of a dask.distributed scheduler (default: a local cluster)")
    run.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    run.add_argument("--grid-resolution", type=int, default=100, choices=[10, 25, 50, 100],
                     help="connectivity grid in um that unionize reads (default 100; ISH uses the 200 um grid)")
    run.add_argument("--extra-grid-resolution", type=int, nargs="+", default=(), choices=[10, 25, 50, 100],
                     metavar="UM", help="connectivity grids also written from the same detections, e.g. 25 "
                                        "(AllenSDK's default resolution; at 25 um about 2 GB of memory per "
                                        "data set being gridded)")
    run.add_argument("--channel-volumes", action="store_true",
                     help="also resample connectivity images into the 25 um CCF (Allen's "
                          "ImagesResampledTo25MicronARA.zip, for download_reference_aligned_image_channel_volumes)")
    run.add_argument("--reference-resolution", type=int, default=25, choices=[25, 50, 100],
                     help="voxel size in um of the template the sections are registered to (default 25)")
    run.add_argument("--keep-alignment", action="store_true",
                     help="use the transforms already in dataset.json instead of aligning again")
    run.add_argument("--contrast", choices=["model", "template"], default="model",
                     help="the aligner's similarity, as for brainmap align (default model: any stain)")
    run.add_argument("--affine-only", action="store_true", help="align with no non-linear stage after the affine")
    run.add_argument("--no-ish-smoothing", action="store_true",
                     help="ISH: write the expression grids without Allen's in-plane and between-section smoothing "
                          "(on by default)")
    run.set_defaults(run=_run_pipeline)

    search = commands.add_parser("search", help="search services on a data directory, and spatial search lines")
    search_commands = search.add_subparsers(dest="search_command", required=True, metavar="SEARCH_COMMAND")
    if services:
        from brainmap.server.local_search import add_search_commands

        add_search_commands(search_commands)
    search.set_defaults(run=_run_search)
    lines = search_commands.add_parser("lines", help="spatial search lines from an injection site to dense voxels")
    lines.add_argument("grid_dir", type=Path, help="folder with projection_density_N.nrrd and injection_fraction_N.nrrd")
    lines.add_argument("--out", type=Path, required=True, help="JSON file to write")
    lines.add_argument("--density-range", type=float, nargs=2, default=(0.04, 0.3), metavar=("LOW", "HIGH"),
                       help="projection density of the voxels to draw lines from (default 0.04 0.3)")
    lines.add_argument("--injection-threshold", type=float, default=0.5,
                       help="injection fraction above which a voxel is part of the injection site (default 0.5)")
    lines.add_argument("--include-fiber-tracts", action="store_true", help="keep voxels in fibre tracts")
    lines.set_defaults(run=_run_search_lines)

    serve = commands.add_parser("serve", help="the Allen-compatible HTTP API and web viewer")
    from brainmap.server.serve import add_serve_arguments

    add_serve_arguments(serve)
    serve.set_defaults(run=_run_serve)

    load = commands.add_parser("load", help="load pipeline outputs and the bundled ontology into the database")
    from brainmap.store.options import add_load_arguments

    add_load_arguments(load)
    load.set_defaults(run=_run_load)

    unionize = commands.add_parser("unionize", help="structure unionization of a folder of grid volumes")
    unionize.add_argument("grid_dir", type=Path, help="folder of {name}_{resolution}.nrrd grid files")
    unionize.add_argument("--product", choices=["connectivity", "ish"], default="connectivity",
                          help="connectivity: ProjectionStructureUnionize rows from projection grids (default); "
                               "ish: StructureUnionize rows from expression grids")
    unionize.add_argument("--grid-resolution", type=int, help="which resolution's files to use (um)")
    unionize.add_argument("--experiment-id", type=int, help="id written into the rows")
    unionize.add_argument("--pixel-size", type=float, default=0.35, help="image pixel size in um (default 0.35)")
    unionize.add_argument("--annotation", type=Path,
                          help="annotation NRRD on the grid, e.g. Allen's annotation_10.nrrd (default: an "
                               "annotation_{res}.nrrd in GRID_DIR, else the bundled one; at 10 um the bundled 25 um "
                               "one upsampled by nearest neighbour); read slab by slab with the grids")
    unionize.add_argument("--out", type=Path, help="CSV to write (default GRID_DIR/structure_unionizes.csv)")
    unionize.set_defaults(run=_run_unionize)
    return parser


def _damage(args: argparse.Namespace):
    from brainmap.specimen.synthetic import DamageRates

    if args.no_damage:
        return False
    return DamageRates(fold=0.05) if args.warp else True


def _run_specimen_make(args: argparse.Namespace) -> int:
    from brainmap.specimen.synthetic import make_specimen

    if args.product == "connectivity" and args.experiment is None:
        raise ValueError("--product connectivity needs --experiment ID (e.g. 112672974)")
    if args.product == "ish" and not args.gene:
        raise ValueError("--product ish needs --gene SYMBOL (e.g. Pvalb)")
    dataset = make_specimen(
        args.product, args.out, experiment_id=args.experiment, gene=args.gene, plane=args.plane,
        pixel_size_um=args.pixel_size, seed=args.seed, truth_resolution_um=args.truth_resolution,
        damage=_damage(args), alignment=args.alignment, overwrite=args.overwrite,
        appearance=args.appearance, warp=bool(args.warp),
    )
    usable = sum(not image.failed for image in dataset.images)
    print(f"wrote {args.out}: data set {dataset.id}, {dataset.product} {dataset.plane}, "
          f"{len(dataset.images)} sections ({usable} usable), {dataset.pixel_size_um:g} um pixels; truth in truth/")
    return 0


def _run_specimen_import(args: argparse.Namespace) -> int:
    from brainmap.specimen.importer import import_sections, import_stack

    if args.stack:
        if len(args.sources) != 1:
            raise ValueError("--stack takes one source (a multi-page TIFF, a folder of planes, NRRD or NIfTI)")
        if not args.orientation:
            raise ValueError("--stack needs --orientation (brainglobe's three letters, e.g. psl)")
        dataset = import_stack(args.sources[0], args.out, orientation=args.orientation, voxel_um=args.voxel_size,
                               plane=args.plane, product=args.product, stain=args.stain, dataset_id=args.id,
                               overwrite=args.overwrite)
    else:
        dataset = import_sections(args.sources, args.out, pixel_size_um=args.pixel_size,
                                  section_thickness_um=args.section_thickness, plane=args.plane,
                                  product=args.product, stain=args.stain, sampling_um=args.sampling,
                                  numbers=args.numbers, dataset_id=args.id, pad=args.pad, overwrite=args.overwrite)
    print(f"wrote {args.out}: data set {dataset.id}, {dataset.product} {dataset.plane}, {len(dataset.images)} "
          f"sections, {dataset.pixel_size_um:g} um pixels, {dataset.metadata['stain']} "
          f"({dataset.metadata['stain_source']}); align it with: brainmap align {args.out}")
    return 0


def _run_align(args: argparse.Namespace) -> int:
    from brainmap.pipeline.align import run_align_cli

    run_align_cli(args.dataset_dir, reference_resolution_um=args.reference_resolution, template=args.template,
                  contrast=args.contrast, nonlinear=not args.affine_only)
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from brainmap.pipeline.run import RunSettings, run_pipeline, summarize_runs

    settings = RunSettings(reference_resolution_um=args.reference_resolution,
                           grid_resolution_um=args.grid_resolution, keep_alignment=args.keep_alignment,
                           extra_grid_resolutions_um=tuple(args.extra_grid_resolution),
                           channel_volumes=args.channel_volumes, contrast=args.contrast,
                           nonlinear=not args.affine_only, ish_smoothing=not args.no_ish_smoothing)
    runs = run_pipeline(args.dataset_dirs, settings, scheduler=args.scheduler, workers=args.workers)
    print(summarize_runs(runs))
    return 0


def _run_search_lines(args: argparse.Namespace) -> int:
    from brainmap.search.spatial_lines import run_spatial_lines_cli

    summary = run_spatial_lines_cli(args.grid_dir, args.out, density_range=tuple(args.density_range),
                                    injection_threshold=args.injection_threshold,
                                    exclude_fiber_tracts=not args.include_fiber_tracts)
    print(f"wrote {args.out}: {summary}")
    return 0


def _run_search(args: argparse.Namespace) -> int:
    from brainmap.server.local_search import run_search_command

    return run_search_command(args)


def _run_serve(args: argparse.Namespace) -> int:
    from brainmap.server.serve import run_serve_command

    return int(run_serve_command(args) or 0)


def _run_load(args: argparse.Namespace) -> int:
    from brainmap.store.load import run_load_command

    return run_load_command(args.dirs, database_url=args.database_url, data_dir=args.data_dir)


def _run_unionize(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from brainmap.pipeline.unionize.grids import GridFolder, projection_volume_slabs

    grids = GridFolder(args.grid_dir, resolution=args.grid_resolution)
    connectivity = args.product == "connectivity"
    # The grid files start decoding now, while the unionizers (numba, pandas) load.
    with projection_volume_slabs(grids, args.annotation) if connectivity else nullcontext() as slabs:
        from brainmap.io.atomic import atomic_write
        from brainmap.pipeline.unionize import unionize_annotation, unionize_expression, unionize_projection

        space = unionize_annotation(grids, args.annotation)
        source = getattr(space, "source", None)  # a StreamedAnnotation's; the 200 um ISH grid's space has none
        print(f"annotation: {source}, read slab by slab" if source else
              f"annotation: the bundled 25 um annotation on Allen's {grids.resolution} um ISH expression grid",
              file=sys.stderr)
        if connectivity:
            table = unionize_projection(grids, space, experiment_id=args.experiment_id,
                                        pixel_size_um=args.pixel_size, slabs=slabs)
        else:
            table = unionize_expression(grids, space, section_data_set_id=args.experiment_id)
    out = args.out or args.grid_dir / "structure_unionizes.csv"
    with atomic_write(out, "w", newline="") as fh:
        table.to_csv(fh, index=False)
    per = "x hemispheres 1, 2, 3" if connectivity else "one row each"
    print(f"wrote {out}: {len(table):,} rows ({table.structure_id.nunique()} structures, {per})")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from brainmap.demo import run_demo

    run_demo(args.out, resolution=args.resolution, annotation=args.annotation, specimens=not args.atlas_only,
             workers=args.workers, scheduler=args.scheduler)
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from brainmap.inventory import describe_installation

    print(describe_installation())
    return 0


def _run_structure(args: argparse.Namespace) -> int:
    from brainmap.atlas.describe import describe_structure, resolve_structure

    space = _reference_space(args)
    node = resolve_structure(space.structure_tree, args.query)
    print(describe_structure(space, int(node["id"])))
    return 0


def _run_slice(args: argparse.Namespace) -> int:
    from brainmap.io.png import write_png

    space = _reference_space(args)
    write_png(args.out, space.get_slice_image(args.plane, args.position))
    print(f"wrote {args.out}")
    return 0


def _run_mask(args: argparse.Namespace) -> int:
    import numpy as np

    from brainmap.atlas.describe import resolve_structure
    from brainmap.io.nrrd import write_nrrd

    space = _reference_space(args)
    ids = [int(resolve_structure(space.structure_tree, q)["id"]) for q in args.structures]
    mask = space.make_structure_mask(ids, direct_only=args.direct_only)
    write_nrrd(args.out, mask.astype(np.uint8), spacing_um=space.resolution)
    print(f"wrote {args.out}: {int(mask.sum()):,} voxels of {', '.join(args.structures)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainmap`` command; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    # the search services' sub-commands (their options come from the server's service table: ~2 s of imports)
    # only where a command line reaches them; `brainmap --help` lists the commands, not search's sub-commands
    parser = build_parser(services="search" in words)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (BrainmapError, FileNotFoundError, ValueError) as error:
        print(f"brainmap: error: {error}", file=sys.stderr)
        return 2
    finally:
        if argv is None:  # the process's own command line: it exits next
            _spare_the_exit_collections()


def _spare_the_exit_collections() -> None:
    """Move every object to the collector's permanent generation before the interpreter exits.

    At exit the interpreter runs full garbage collections over every object still alive, and numba, llvmlite,
    pandas and scipy leave many: ~0.3 s of a 5 s ``brainmap unionize`` (a script that only calls one cached numba
    function exits in 0.42 s, frozen in 0.07 s). Frozen objects are not traversed; what reference counting frees
    is still freed, the atexit handlers still run, and the operating system takes back the rest. Only for the
    command's own process (tests call :func:`main` with ``argv`` and go on)."""
    import gc

    gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
