"""Making a synthetic specimen: a SectionDataSet folder with its images, and the ground truth beside them.

::

    <out>/
      dataset.json              # alignment3d null (and, by default, every alignment2d null): what alignment finds
      images/                   # {section:04d}_{image id}_{tissue|signal}.tif, uint16
      truth/
        transforms.json         # the true Alignment3d and every image's true Alignment2d (Allen's parameter
                                #   dicts), the specimen draws, missing sections, each section's jitter and damage
        signal_density_{res}.nrrd      # float32 (AP, DV, LR) expected fraction of signal pixels
        injection_fraction_{res}.nrrd  # connectivity only: float32 fraction of each voxel in the injection site
        profile.csv             # per structure and hemisphere: the truth used (NPV / expression) and the
                                #   volume's mean density over the structure with its descendants

The truth is written first and ``dataset.json`` last (by :func:`~brainmap.specimen.folder.write_dataset`), so a
folder with a ``dataset.json`` is complete. Images are rendered and written one section at a time.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.bundled import BUNDLED_RESOLUTIONS
from brainmap.data import tables
from brainmap.io.atomic import atomic_write
from brainmap.io.nrrd import read_nrrd, write_nrrd
from brainmap.specimen.folder import DATASET_FILE, write_dataset
from brainmap.specimen.model import PLANES, SectionDataSet, SectionImage
from brainmap.specimen.synthetic.geometry import DamageRates, SpecimenPlan, plan_specimen, plan_to_dict
from brainmap.specimen.deformation import DeformationField
from brainmap.specimen.synthetic.appearance import (
    appearance_channels,
    appearance_volume,
    check_appearance,
    random_warp,
)
from brainmap.specimen.synthetic.render import RenderSources, render_section, tissue_volume
from brainmap.specimen.synthetic.signal import TruthVolumes, truth_density
from brainmap.specimen.synthetic.template import make_template
from brainmap.specimen.transforms import Alignment2d, Alignment3d

__all__ = [
    "DEFAULT_PIXEL_SIZE_UM",
    "TRUTH_DIR",
    "Truth",
    "make_specimen",
    "read_truth",
]

#: Default image pixel size (um) per product: a full data set stays a few hundred MB (see the docs).
DEFAULT_PIXEL_SIZE_UM: dict[str, float] = {"connectivity": 10.0, "ish": 8.0}
#: Largest image (pixels) a section may have; finer pixels must be asked for in smaller pieces.
MAX_IMAGE_PIXELS = 120_000_000
TRUTH_DIR = "truth"
ALIGNMENT_CHOICES = ("none", "2d", "all")


def _synthetic_ish_id(gene: str, plane: str) -> int:
    """A stable id for an ISH specimen whose (gene, plane) has no experiment in the table: 9xx,xxx,xxx."""
    return 900_000_000 + zlib.crc32(f"{gene}|{plane}".encode()) % 100_000_000


@lru_cache(maxsize=1)
def _bundled_space(resolution_um: int) -> ReferenceSpace:
    """The bundled reference space, kept for the next call (its label index costs ~1-2 s to build)."""
    return ReferenceSpace.bundled(resolution_um)


def _resolve_inputs(product: str, experiment_id: int | None, gene: str | None, plane: str | None
                    ) -> tuple[int, str, dict[str, Any], str | None]:
    """Check the arguments; return ``(dataset id, plane, metadata, canonical gene)``."""
    if product == "connectivity":
        if experiment_id is None:
            raise ValueError("product 'connectivity' needs experiment_id (an experiment in both the Knox 2019 and "
                             "Oh 2014 tables, e.g. 112672974)")
        if gene is not None:
            raise ValueError("gene is for product 'ish'; a connectivity specimen takes experiment_id")
        if plane not in (None, "coronal"):
            raise ValueError(f"connectivity specimens are coronal (serial two-photon tomography), not {plane!r}; "
                             "sagittal is for ISH")
        record = tables.connectivity_experiment(experiment_id)  # UnknownExperimentError with examples
        plane = "coronal"
        metadata = {
            "experiment_id": int(record["id"]),
            "injection_structures": [int(s) for s in record["injection_structures"]],
            "primary_injection_structure": int(record["primary_injection_structure"]),
            "structure_abbrev": record["structure_abbrev"],
            "injection_coordinates_um": [float(record["injection_x"]), float(record["injection_y"]),
                                         float(record["injection_z"])],
            "injection_volume": float(record["injection_volume"]),  # mm3, Allen's field
            "specimen_name": record["specimen_name"],
            "strain": record["strain"],
        }
        return int(record["id"]), plane, metadata, None
    if product == "ish":
        if gene is None:
            raise ValueError("product 'ish' needs gene (a gene symbol with an ISH experiment in "
                             "ish/ish_p56_experiments.csv, e.g. 'Pvalb')")
        if experiment_id is not None:
            raise ValueError("experiment_id is for product 'connectivity'; an ISH specimen takes gene")
        rows = tables.ish_gene_experiments(gene)  # UnknownGeneError with close matches
        canonical = str(rows["gene"].iloc[0])
        plane = plane or str(rows["plane_of_section"].iloc[0])
        same_plane = rows[rows["plane_of_section"] == plane]
        if not same_plane.empty:
            row = same_plane.iloc[0]
            dataset_id, source = int(row["experiment_id"]), "ish_p56_experiments.csv"
        else:
            row = rows.iloc[0]
            dataset_id, source = _synthetic_ish_id(canonical, plane), "synthetic (no experiment of this plane)"
        metadata = {"gene": canonical, "experiment_id": dataset_id, "experiment_id_source": source,
                    "genes": [{"acronym": canonical, **GENE_NAMES.get(canonical, {})}],
                    "table_experiment_ids": [int(e) for e in rows["experiment_id"]],
                    "probe_orientation": str(row["probe_orientation"]), "plane_of_section": plane,
                    "hemisphere": "left" if plane == "sagittal" else "both"}
        return dataset_id, plane, metadata, canonical
    raise ValueError(f"product must be 'connectivity' or 'ish', got {product!r}")


#: Official full names and Entrez Gene ids of the demo's genes, as NCBI Gene lists them for Mus musculus
#: (https://www.ncbi.nlm.nih.gov/gene/, public domain); a lab's own metadata would carry these for every gene.
GENE_NAMES: dict[str, dict[str, Any]] = {
    "Pvalb": {"name": "parvalbumin", "entrez_id": 19293},
    "Calb1": {"name": "calbindin 1", "entrez_id": 12307},
    "Gad1": {"name": "glutamate decarboxylase 1", "entrez_id": 14415},
    "Slc17a7": {"name": "solute carrier family 17 (sodium-dependent inorganic phosphate cotransporter), member 7",
                "entrez_id": 72961},
}

#: The truth's deformation field file (specimens made with a warp).
TRUTH_DEFORMATION = "deformation.nrrd"


def _dataset(plan: SpecimenPlan, dataset_id: int, metadata: dict[str, Any], alignment: str,
             channels: tuple[str, ...]) -> SectionDataSet:
    images = [SectionImage(id=s.image_id, section_number=s.section_number, channels=list(channels),
                           width=plan.width, height=plan.height, failed=s.failed,
                           alignment2d=s.alignment2d if alignment in ("2d", "all") else None)
              for s in plan.sections]
    return SectionDataSet(id=dataset_id, plane=plan.plane, product=plan.product,
                          section_thickness_um=plan.section_thickness_um, sampling_um=plan.sampling_um,
                          pixel_size_um=plan.pixel_size_um, images=images,
                          alignment3d=Alignment3d.from_tvr(plan.tvr) if alignment == "all" else None,
                          metadata=metadata)


def _write_truth(folder: Path, plan: SpecimenPlan, truth: TruthVolumes, info: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    res = int(round(truth.resolution_um))
    document = {"schema_version": 1, **info, **plan_to_dict(plan), "truth_resolution_um": truth.resolution_um}
    with atomic_write(folder / "transforms.json", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(document, indent=1, allow_nan=False) + "\n")
    header_kv = {"content": f"synthetic {plan.product} signal density (fraction of signal pixels)"}
    write_nrrd(folder / f"signal_density_{res}.nrrd", truth.signal_density, header_kv, spacing_um=truth.resolution_um)
    if truth.injection_fraction is not None:
        write_nrrd(folder / f"injection_fraction_{res}.nrrd", truth.injection_fraction,
                   {"content": "synthetic injection fraction"}, spacing_um=truth.resolution_um)
    if truth.profile is not None:
        with atomic_write(folder / "profile.csv", "w", encoding="utf-8", newline="") as fh:
            truth.profile.to_csv(fh, index=False, float_format="%.9g")


def make_specimen(product: str, out: str | os.PathLike[str], *, experiment_id: int | None = None,
                  gene: str | None = None, plane: str | None = None, pixel_size_um: float | None = None,
                  seed: int = 0, truth_resolution_um: int = 25, damage: bool | DamageRates = True,
                  progress: bool = True, alignment: str = "none", overwrite: bool = False,
                  appearance: str = "nissl", warp: bool | tuple[float, float] = False) -> SectionDataSet:
    """Make a synthetic specimen folder with known ground truth.

    Args:
        product: ``"connectivity"`` or ``"ish"``.
        out: the data set folder to write (created; ``truth/`` goes inside it).
        experiment_id: connectivity: an experiment in both the Knox 2019 and Oh 2014 tables (406 are; e.g.
            112672974). Others raise :class:`~brainmap.data.tables.UnknownExperimentError`.
        gene: ISH: a gene symbol with an ISH experiment in ``ish/ish_p56_experiments.csv`` (exact, then
            case-insensitive match). Others raise :class:`~brainmap.data.tables.UnknownGeneError`.
        plane: ``"coronal"`` or ``"sagittal"``; default coronal for connectivity and the table's plane for ISH
            (all coronal). Sagittal ISH covers the left hemisphere only (~20-25 sections).
        pixel_size_um: image pixel size; default :data:`DEFAULT_PIXEL_SIZE_UM` (10 um connectivity, 8 um ISH).
        seed: everything random (specimen pose, sections, jitter, damage, texture, noise) follows from it and
            the inputs: the same call writes the same files.
        truth_resolution_um: resolution of the truth volumes and of the template/density the images sample:
            25 (default), 50 or 100 um.
        damage: ``True`` for :class:`DamageRates` defaults (missing and failed sections, tears, bubbles; at least
            one damaged section), ``False`` for none, or a :class:`DamageRates`.
        progress: show a progress bar over sections.
        alignment: what ``dataset.json`` holds: ``"none"`` (default; alignment2d and alignment3d null -- what the
            aligner must find), ``"2d"`` (the true Alignment2d of every image, alignment3d null), or ``"all"``
            (both true: for testing detection, gridding and unionization without alignment).
        overwrite: replace a data set already in ``out``.
        appearance: the tissue channel's look (:mod:`.appearance`): ``"nissl"`` (default; drawn from the
            aligner's template), or ``"fluorescence"``, ``"brightfield"``, ``"rgb"`` (channels red, green,
            blue): random per-tissue-class contrasts, bias fields and structured noise sharing nothing with the
            template.
        warp: ``True`` for a smooth non-linear deformation of 100-300 um (largest displacement) on top of the
            affine, or a ``(low, high)`` range of its largest displacement in microns; written to
            ``truth/deformation.nrrd`` (the true map is ``W o tvr``).

    Returns:
        The SectionDataSet as written (read it back with :func:`~brainmap.specimen.folder.read_dataset`; the
        truth with :func:`read_truth`).
    """
    check_appearance(appearance)
    if alignment not in ALIGNMENT_CHOICES:
        raise ValueError(f"alignment must be one of {ALIGNMENT_CHOICES}, got {alignment!r}")
    if plane is not None and plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    if int(truth_resolution_um) not in BUNDLED_RESOLUTIONS:
        raise ValueError(f"truth_resolution_um must be one of {BUNDLED_RESOLUTIONS}, got {truth_resolution_um!r}")
    dataset_id, plane, metadata, canonical_gene = _resolve_inputs(product, experiment_id, gene, plane)
    pixel = DEFAULT_PIXEL_SIZE_UM[product] if pixel_size_um is None else float(pixel_size_um)
    if not (np.isfinite(pixel) and pixel > 0):
        raise ValueError(f"pixel_size_um must be a positive number of microns, got {pixel_size_um!r}")
    rates = damage if isinstance(damage, DamageRates) else (DamageRates() if damage else None)
    folder = Path(out)
    if (folder / DATASET_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{folder}: already holds a data set ({DATASET_FILE}); pass overwrite=True to "
                                  "replace it")
        (folder / DATASET_FILE).unlink()  # the folder is 'unfinished' until the new dataset.json is written

    space = _bundled_space(int(truth_resolution_um))
    rng = np.random.default_rng([int(seed), 0xB4A1])
    plan = plan_specimen(space, product, plane, pixel, rng, dataset_id=dataset_id, damage=rates)
    if plan.width * plan.height > MAX_IMAGE_PIXELS:
        raise ValueError(f"pixel_size_um={pixel} makes {plan.width} x {plan.height} pixel images, more than "
                         f"{MAX_IMAGE_PIXELS:,} pixels; use a coarser pixel size")
    truth = truth_density(product, experiment_id=experiment_id, gene=canonical_gene, seed=seed, space=space)
    if truth.projection is not None:
        metadata["density_scale"] = truth.projection.density_scale
    if truth.expression is not None:
        metadata["cell_diameter_um"] = truth.expression.cell_diameter_um
    metadata.update({"synthetic": True, "generator": "brainmap.specimen.synthetic", "seed": int(seed),
                     "truth": TRUTH_DIR})
    channels = appearance_channels(appearance) + ("signal",)
    metadata["channels"] = {name: _channel_doc(product, name, appearance) for name in channels}
    metadata["appearance"] = appearance
    deformation = None
    if warp:
        deformation = random_warp(space, seed, (100.0, 300.0) if warp is True else tuple(warp))
        metadata["warp_max_um"] = round(float(deformation.magnitude_um().max()), 1)
    dataset = _dataset(plan, dataset_id, metadata, alignment, channels)

    info = {"dataset_id": dataset_id, "seed": int(seed), "metadata": metadata}
    if truth.projection is not None:
        info["skipped_acronyms"] = truth.projection.skipped_acronyms
        info["injection_radius_um"] = truth.projection.injection_radius_um
    if truth.expression is not None:
        info["expression"] = truth.expression.info
    _write_truth(folder / TRUTH_DIR, plan, truth, info)
    if deformation is not None:
        deformation.write(folder / TRUTH_DIR / TRUTH_DEFORMATION)
    elif (folder / TRUTH_DIR / TRUTH_DEFORMATION).exists():
        (folder / TRUTH_DIR / TRUTH_DEFORMATION).unlink()

    tissue = (tissue_volume(make_template(space, seed), space) if appearance == "nissl"
              else appearance_volume(space, seed, appearance))
    sources = RenderSources(
        resolution_um=truth.resolution_um, tissue=tissue, appearance=appearance, warp=deformation,
        signal_density=truth.signal_density, injection_fraction=truth.injection_fraction,
        expression_intensity=truth.expression_intensity,
        cell_diameter_um=truth.expression.cell_diameter_um if truth.expression is not None else 12.0)

    def arrays() -> Iterator[np.ndarray]:
        # Render the next section in a worker thread while this one is compressed and written (zlib, FFTs and
        # most numpy work release the GIL): at most two sections are in memory.
        sections = plan.sections
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(render_section, plan, sections[0], sources, seed)
            for k in tqdm(range(len(sections)), disable=not progress, unit="section",
                          desc=f"virtual microscope: {product} {dataset_id}"):
                images = pending.result()
                if k + 1 < len(sections):
                    pending = pool.submit(render_section, plan, sections[k + 1], sources, seed)
                for channel in channels:
                    yield images[channel]
                del images

    write_dataset(folder, dataset, arrays(), overwrite=True, progress=False)
    return dataset


def _channel_doc(product: str, channel: str, appearance: str = "nissl") -> str:
    if channel != "signal" and appearance != "nissl":
        return f"{appearance} tissue appearance, {channel} (a model the aligner's template shares nothing with)"
    return {
        ("connectivity", "tissue"): "red channel: tissue background (two-photon)",
        ("connectivity", "signal"): "green channel: GFP-labelled axons and injection site (two-photon)",
        ("ish", "tissue"): "counterstain, separated from the brightfield colour image (stain amount)",
        ("ish", "signal"): "expression stain, separated from the brightfield colour image (stain amount)",
    }[(product, channel)]


@dataclass
class Truth:
    """The ground truth of a synthetic specimen (:func:`read_truth`).

    Attributes:
        alignment3d: the true specimen volume <-> reference transform.
        alignment2d: the true Alignment2d of every image, by image id.
        signal_density: float32 ``(AP, DV, LR)``, expected fraction of signal pixels.
        injection_fraction: float32 ``(AP, DV, LR)`` (connectivity) or ``None``.
        resolution_um: voxel size of the volumes.
        profile: ``truth/profile.csv``.
        deformation: the true non-linear warp after the affine (``W o tvr``), or None.
        info: the rest of ``truth/transforms.json`` (specimen draws, missing sections, each image's jitter,
            damage and ``failed`` flag under ``info["images"]``).
    """

    alignment3d: Alignment3d
    alignment2d: dict[int, Alignment2d]
    signal_density: np.ndarray
    injection_fraction: np.ndarray | None
    resolution_um: float
    profile: pd.DataFrame
    info: dict[str, Any]
    deformation: DeformationField | None = None


def read_truth(folder: str | os.PathLike[str]) -> Truth:
    """Read the ``truth/`` of a synthetic specimen folder (the folder itself, or its ``truth/``)."""
    folder = Path(folder)
    truth_dir = folder if (folder / "transforms.json").exists() else folder / TRUTH_DIR
    path = truth_dir / "transforms.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {folder} is not a synthetic specimen made by make_specimen")
    info = json.loads(path.read_text(encoding="utf-8"))
    res = int(round(info["truth_resolution_um"]))
    density, _ = read_nrrd(truth_dir / f"signal_density_{res}.nrrd")
    injection_path = truth_dir / f"injection_fraction_{res}.nrrd"
    injection = read_nrrd(injection_path)[0] if injection_path.exists() else None
    return Truth(alignment3d=Alignment3d.from_allen(info["alignment3d"]),
                 alignment2d={int(i["id"]): Alignment2d.from_allen(i["alignment2d"]) for i in info["images"]},
                 signal_density=density, injection_fraction=injection, resolution_um=float(info["truth_resolution_um"]),
                 profile=pd.read_csv(truth_dir / "profile.csv"), info=info,
                 deformation=(DeformationField.read(truth_dir / TRUTH_DEFORMATION)
                              if (truth_dir / TRUTH_DEFORMATION).exists() else None))
