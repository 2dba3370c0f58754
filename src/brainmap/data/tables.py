"""Small real Allen tables shipped with the package, and loaders for them.

Files (copied from ``../shared/data``; sources and terms in the data notice):

* ``connectivity/experiments_wt_knox2019.json`` -- 428 wild-type Mouse Connectivity experiments (Knox et al.
  2019): id, injection structures, ``injection_volume`` (mm^3), ``injection_x/y/z`` and ``centroid_x/y/z``
  (um, AP/DV/LR), ``structure_abbrev``, strain, specimen name.
* ``connectivity/oh2014_experiments.csv`` -- the 469 experiments of Oh et al. 2014 (id, specimen, primary and
  secondary injection structures, injection volume mm^3).
* ``connectivity/oh2014_normalized_projection_volume.csv.gz`` -- the long table ``experiment_id,
  structure_acronym, hemisphere_id, normalized_projection_volume`` (469 experiments x 295 structures x 2
  hemispheres; CCF v2 acronyms; -1 = missing).
* ``ish/ish_p56_experiments.csv`` -- 6,545 P56 ISH (and Nissl) SectionDataSets: experiment_id, gene,
  plane_of_section, treatment, probe_orientation, pixel_size, animal.

Every loader reads its file once per process (cached) and returns a fresh copy, so callers may modify it.
Files are located with :mod:`importlib.resources` (package ``brainmap``, folder ``data``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from brainmap.errors import BrainmapError

__all__ = [
    "UnknownExperimentError",
    "UnknownGeneError",
    "connectivity_experiment",
    "data_path",
    "ish_experiments",
    "ish_gene_experiments",
    "knox_experiments",
    "oh2014_experiments",
    "oh2014_projection_volumes",
    "projection_volumes_of",
    "synthetic_connectivity_experiment_ids",
]

KNOX_EXPERIMENTS = "connectivity/experiments_wt_knox2019.json"
OH2014_EXPERIMENTS = "connectivity/oh2014_experiments.csv"
OH2014_NPV = "connectivity/oh2014_normalized_projection_volume.csv.gz"
ISH_EXPERIMENTS = "ish/ish_p56_experiments.csv"


class UnknownExperimentError(BrainmapError, LookupError):
    """An experiment id is not in the table(s) asked about."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown experiment"


class UnknownGeneError(BrainmapError, LookupError):
    """A gene symbol has no ISH experiment in the bundled table."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown gene"


def data_path(relative: str) -> Path:
    """The path of a bundled table, e.g. ``data_path("ish/ish_p56_experiments.csv")``."""
    path = Path(str(resources.files("brainmap") / "data" / relative))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled table missing from the brainmap installation (package data "
                                f"'data/{relative}')")
    return path


@cache
def _knox() -> pd.DataFrame:
    path = data_path(KNOX_EXPERIMENTS)
    with open(path, encoding="utf-8") as fh:
        records = json.load(fh)
    frame = pd.DataFrame.from_records(list(records.values()))
    return frame.set_index("id", drop=False).rename_axis("experiment_id").sort_index()


def knox_experiments() -> pd.DataFrame:
    """The 428 wild-type experiments of Knox et al. 2019, indexed by experiment id.

    Columns: ``id``, ``injection_structures`` (list of ids), ``primary_injection_structure``,
    ``injection_volume`` (mm^3), ``injection_x/y/z`` (um: AP, DV, LR), ``centroid_x/y/z`` (um), ``structure_id``,
    ``structure_abbrev``, ``structure_name``, ``strain``, ``specimen_name``, ``gender``, ``product_id``.
    """
    return _knox().copy()


@cache
def _oh_experiments() -> pd.DataFrame:
    return pd.read_csv(data_path(OH2014_EXPERIMENTS)).set_index("experiment_id", drop=False).sort_index()


def oh2014_experiments() -> pd.DataFrame:
    """The 469 experiments of Oh et al. 2014, indexed by experiment id (``specimen_name``,
    ``primary_injection_structure``, ``secondary_injection_structures`` (acronyms), ``injection_volume_mm3``)."""
    return _oh_experiments().copy()


@cache
def _oh_npv() -> pd.DataFrame:
    frame = pd.read_csv(data_path(OH2014_NPV))
    frame["structure_acronym"] = frame["structure_acronym"].astype(str).str.strip()  # the file has "SUM "
    return frame


def oh2014_projection_volumes() -> pd.DataFrame:
    """The long table of normalized projection volumes (Oh et al. 2014): ``experiment_id``,
    ``structure_acronym`` (CCF v2, whitespace stripped), ``hemisphere_id`` (1 left, 2 right),
    ``normalized_projection_volume`` (projection volume / injection volume; -1 = missing)."""
    return _oh_npv().copy()


def projection_volumes_of(experiment_id: int) -> pd.DataFrame:
    """The rows of :func:`oh2014_projection_volumes` of one experiment; raises
    :class:`UnknownExperimentError` when it has none."""
    frame = _oh_npv()
    rows = frame[frame["experiment_id"] == int(experiment_id)]
    if rows.empty:
        raise UnknownExperimentError(f"experiment {experiment_id} is not in {OH2014_NPV} (Oh et al. 2014 "
                                     "normalized projection volumes)")
    return rows.reset_index(drop=True)


@cache
def _synthetic_ids() -> tuple[int, ...]:
    both = set(_knox().index.astype(int)) & set(_oh_npv()["experiment_id"].astype(int))
    return tuple(sorted(both))


def synthetic_connectivity_experiment_ids() -> list[int]:
    """Experiments that have both injection coordinates (Knox 2019) and projection volumes (Oh 2014): the ones
    the virtual microscope can make (406)."""
    return list(_synthetic_ids())


def connectivity_experiment(experiment_id: int) -> dict[str, Any]:
    """One experiment's record of :func:`knox_experiments` as a plain dict (``injection_x/y/z`` um AP/DV/LR,
    ``injection_volume`` mm^3, ...), checked to have projection volumes in the Oh 2014 table.

    Raises :class:`UnknownExperimentError` naming the table(s) it is missing from, with examples of ids that
    work.
    """
    try:
        eid = int(experiment_id)
    except (TypeError, ValueError):
        raise UnknownExperimentError(f"experiment id must be an integer, got {experiment_id!r}") from None
    knox = _knox()
    in_knox = eid in knox.index
    in_oh = bool((_oh_npv()["experiment_id"] == eid).any())
    if not (in_knox and in_oh):
        missing = [name for name, ok in ((KNOX_EXPERIMENTS, in_knox), (OH2014_NPV, in_oh)) if not ok]
        examples = ", ".join(map(str, _synthetic_ids()[:5]))
        raise UnknownExperimentError(
            f"experiment {eid} is not in {' nor '.join(missing)}; a synthetic connectivity specimen needs an "
            f"experiment in both ({len(_synthetic_ids())} are, e.g. {examples}; see "
            "brainmap.data.tables.synthetic_connectivity_experiment_ids())")
    record = knox.loc[eid].to_dict()
    return {key: (value.item() if hasattr(value, "item") else value) for key, value in record.items()}


@cache
def _ish() -> pd.DataFrame:
    return pd.read_csv(data_path(ISH_EXPERIMENTS))


def ish_experiments() -> pd.DataFrame:
    """The P56 ISH table: one row per SectionDataSet (``experiment_id``, ``gene``, ``plane_of_section``,
    ``treatment`` ("ISH" or "NISSL"), ``probe_orientation``, ``pixel_size`` um, animal ...)."""
    return _ish().copy()


def ish_gene_experiments(gene: str) -> pd.DataFrame:
    """The ISH experiments (``treatment == "ISH"``) of a gene symbol, by increasing experiment id.

    The symbol is matched exactly first, then case-insensitively. Raises :class:`UnknownGeneError` (with
    close matches) when the gene has no ISH experiment in the bundled table.
    """
    if not isinstance(gene, str) or not gene.strip():
        raise UnknownGeneError(f"gene must be a non-empty gene symbol, got {gene!r}")
    table = _ish()
    ish = table[table["treatment"] == "ISH"]
    rows = ish[ish["gene"] == gene.strip()]
    if rows.empty:
        rows = ish[ish["gene"].str.lower() == gene.strip().lower()]
    if rows.empty:
        import difflib

        close = difflib.get_close_matches(gene.strip(), ish["gene"].unique().tolist(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownGeneError(f"gene {gene!r} has no ISH experiment in {ISH_EXPERIMENTS} "
                               f"({ish['gene'].nunique()} genes){hint}")
    return rows.sort_values("experiment_id").reset_index(drop=True)
