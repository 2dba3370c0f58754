"""Connectivity searches: Allen's Mouse Connectivity search services over experiments, their structure
unionizes and a data sets x voxels matrix of projection density (the 100 um grid's brain voxels).

    from brainmap.search.connectivity import ConnectivitySearch, create_projection_store

    search = ConnectivitySearch(experiments, unionizes, store)          # tables + a MatrixStore
    search.source("VISp", transgenic_lines=[0]).page(0, 50)             # injected in VISp or its descendants
    search.target(["LGd", "LP"], target_hemisphere="left").page()        # ranked by projection volume there
    search.spatial([8200, 3300, 7800]).page(0, 20)                       # density at a point, with paths
    search.injection_coordinate([8200, 3300, 7800]).page()               # nearest injection sites
    search.correlation(100141219, "Isocortex").page()                    # Pearson's r of projection density
    search.projection_matrix(ids, ["VISp", "LGd"], [1, 2])               # experiments x (hemisphere, structure)

Inputs
------
experiments : DataFrame, one row per experiment
    ``id`` (or an index named ``id`` / ``experiment_id``), ``injection_structures`` (list of structure ids),
    ``primary_injection_structure``, ``injection_x/y/z`` (um: AP, DV, LR), ``injection_volume`` (mm3);
    optional ``transgenic_line`` ('' or missing = wild type), ``injection_hemisphere_id`` (default: 1 when
    ``injection_z`` < the midline, 5700 um, else 2), ``product_id``, ``specimen_name``, ``strain``, ``gender``.
    :func:`brainmap.data.tables.knox_experiments` has this shape.
unionizes : DataFrame of Allen's ProjectionStructureUnionize rows of those experiments (optional)
    (:func:`brainmap.pipeline.unionize.unionize_projection`); only the projection rows (``is_injection``
    false) are used. Structures are already rolled up (a row covers the structure with its descendants).
store : :class:`~brainmap.search.matrix.MatrixStore` of projection density (optional)
    One row per experiment over the brain voxels of the 100 um grid (:func:`create_projection_store`);
    float32 or the compact 8-bit encoding; no data (outside the data mask) is NaN.

The services (Allen's names -> methods, Allen's parameters -> ours)
--------------------------------------------------------------------
``mouse_connectivity_injection_structure`` -> :meth:`ConnectivitySearch.source`, or
:meth:`ConnectivitySearch.target` when ``target_domain`` is given (Allen has no separate target service:
its "target search" is this service with a target domain; we call both through :func:`run_service`).
    ``injection_structures``, ``primary_structure_only``, ``transgenic_lines``, ``injection_hemisphere``
    ('left'/'right'), ``target_domain``, ``target_hemisphere``, ``product_ids`` -> the same names;
    ``injection_domain`` is not supported (Allen's bridge does not use it either).
    Rows (:class:`ExperimentRow`): the experiment fields (below), ``sum`` (projection volume, mm3, summed over
    the target domain's structures -- the whole brain, structure 997, by default -- in the target hemisphere)
    and ``num_voxels`` (the target domain's voxels on the 100 um grid). Source search orders by injection
    volume, descending (Allen's detailed order); target search by ``sum``, descending.
``mouse_connectivity_target_spatial`` -> :meth:`ConnectivitySearch.spatial`
    ``seed_point`` (um, AP/DV/LR), ``transgenic_lines``, ``section_data_set`` (one id; we also take a list,
    ``section_data_sets``), ``injection_structures``, ``primary_structure_only``, ``product_ids``.
    Rows (:class:`SpatialRow`): the experiment fields, ``density`` (projection density at the seed voxel) and
    ``path``: ``[{"coord": [x, y, z], "density": d}, ...]`` from the seed voxel to the injection site.
``mouse_connectivity_injection_coordinate`` -> :meth:`ConnectivitySearch.injection_coordinate`
    ``seed_point``, ``transgenic_lines``, ``injection_structures``, ``primary_structure_only``,
    ``product_ids`` (+ ``injection_distance_threshold``, Allen's bridge's ``injectionDistanceThreshold``).
    Rows (:class:`InjectionCoordinateRow`): the experiment fields and ``distance`` (um), ascending.
``mouse_connectivity_correlation`` -> :meth:`ConnectivitySearch.correlation`
    ``row`` (the seed experiment), ``structures`` (the domain; default the whole brain), ``hemisphere``,
    ``transgenic_lines``, ``injection_structures``, ``primary_structure_only``, ``product_ids``,
    ``sort_order``. Rows (:class:`ConnectivityCorrelationRow`): the experiment fields, ``r`` and ``num_voxels``
    (the domain voxels where both have data). The seed is always kept, whatever the filters (as Allen's).
Every service also takes ``start_row`` and ``num_rows`` (default 2000).

Experiment fields of every row, with Allen's (hyphenated) result names: ``id``, ``name`` (specimen name),
``transgenic_line`` (transgenic-line), ``strain``, ``gender``, ``product_id`` (product-id), ``structure_id``
(structure-id, the primary injection structure), ``structure_abbrev``, ``structure_name``, ``structure_color``,
``injection_structures`` (``[{"id", "abbreviation", "name"}]``), ``injection_coordinates``, ``injection_volume``
and ``injection_hemisphere_id`` (ours). :func:`allen_record` renames a row's fields to Allen's keys.

Filters (shared): ``injection_structures`` keeps experiments with an injection structure (only the primary one
with ``primary_structure_only``) that is one of the given structures or their descendants;
``transgenic_lines`` takes line names (case-insensitive) and 0 / "0" for wild type (Allen: "Specify ID 0 to
exclude all TransgenicLines"); ``injection_hemisphere`` 'left' / 'right' (or 1 / 2); ``product_ids``.

Spatial search
--------------
Experiments whose projection density at the seed voxel is at least ``threshold`` (default 0.001: Allen's
example page says the service returns "experiments with signal density above .001"; AllenSDK's docstring says
">= 0.1" -- the spatial-lines workflow, which asks for paths at densities from 0.04, needs the lower one),
ranked by that density, descending. Each row's ``path`` runs from the seed voxel to the injection site through
the densest voxels: a walk on the 100 um grid that at every step moves to the densest of the 26 neighbours
that are nearer the injection voxel and within 60 degrees of its direction (voxels outside the brain only when
no brain voxel qualifies; ties go to the straighter step). Every step brings the walk nearer, so it always
arrives, in at most about 2x the straight-line number of voxels. The walk is vectorized over all the paths of
a page at once; paths are only made for the rows of the page asked for (``paths=False`` skips them). Points
are voxel centres (um) with the voxel's projection density (None: no data, or outside the brain); the last
point is the injection site's coordinates.

Ties in every ranking are broken by experiment id, so that paging never skips or repeats a row; errors are
:class:`~brainmap.errors.UnknownStructureError`, :class:`UnknownDataSetError` and :class:`SearchInputError`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.atlas.label_index import OntologyOrder
from brainmap.atlas.reference_space import HEMISPHERE_BOTH, HEMISPHERE_LEFT, HEMISPHERE_RIGHT, midline_index
from brainmap.errors import BrainmapError, UnknownStructureError
from brainmap.search import _kernels
from brainmap.search.expression import CorrelationPlan, ExpressionSearch, pearson_from_sums
from brainmap.search.grid import SearchGrid
from brainmap.search.matrix import GridSpec, MatrixStore
from brainmap.search.results import (
    BUILD_HINT,
    DEFAULT_NUM_ROWS,
    MissingSearchDataError,
    Ranking,
    SearchInputError,
    SearchPage,
    UnknownDataSetError,
    check_page,
    rank_order,
)

#: The connectivity grid (um): projection density is searched on the 100 um grid.
CONNECTIVITY_RESOLUTION_UM = 100
#: Default projection-density threshold of a spatial search (see the module docstring).
DEFAULT_SPATIAL_THRESHOLD = 0.001
#: A target search keeps experiments whose summed projection volume is above this (mm3).
DEFAULT_TARGET_THRESHOLD = 0.0
#: The root of the ontology: the default target domain.
ROOT_ID = 997
#: Allen's "fiber tracts" structure.
FIBER_TRACTS_ID = 1009
#: A walk step goes to a neighbour within this angle (cosine) of the direction to the injection site.
_CONE_COS = 0.5
#: Density ties (within this) go to the straighter step.
_TIE = 1e-7
#: Keys of a unionize table that are not metrics.
_UNIONIZE_KEYS = ("experiment_id", "structure_id", "hemisphere_id", "is_injection", "id")
_HEMISPHERE_WORDS = {"left": HEMISPHERE_LEFT, "right": HEMISPHERE_RIGHT, "both": HEMISPHERE_BOTH}


# ------------------------------------------------------------------------------------------------ rows
@dataclass(slots=True)
class ExperimentSummary:
    """The experiment fields every connectivity result row carries (Allen's, see the module docstring)."""

    id: int
    name: str | None
    transgenic_line: str
    strain: str | None
    gender: str | None
    product_id: int | None
    structure_id: int
    structure_abbrev: str | None
    structure_name: str | None
    structure_color: str | None
    injection_structures: list[dict[str, Any]]
    injection_coordinates: list[float]
    injection_volume: float
    injection_hemisphere_id: int


@dataclass(slots=True)
class ExperimentRow(ExperimentSummary):
    """One experiment of a source or target search: ``sum`` is its projection volume (mm3, or the chosen metric)
    summed over the target domain's structures in the target hemisphere (NaN without unionize rows there);
    ``num_voxels`` the number of target-domain voxels on the 100 um grid."""

    sum: float
    num_voxels: int


@dataclass(slots=True)
class SpatialRow(ExperimentSummary):
    """One experiment of a spatial search: ``density`` at the seed voxel and the ``path`` from the seed to the
    injection site (``[{"coord": [x, y, z] um, "density": d}, ...]``; None when paths were not asked for)."""

    density: float
    path: list[dict[str, Any]] | None


@dataclass(slots=True)
class InjectionCoordinateRow(ExperimentSummary):
    """One experiment of an injection-coordinate search: ``distance`` (um) from its injection site to the seed."""

    distance: float


@dataclass(slots=True)
class ConnectivityCorrelationRow(ExperimentSummary):
    """One experiment of a correlation search: Pearson's ``r`` of projection density with the seed experiment's
    over the ``num_voxels`` domain voxels where both have data."""

    r: float
    num_voxels: int


#: Our field names -> Allen's result keys (the others are the same).
ALLEN_FIELD_NAMES = {
    "transgenic_line": "transgenic-line",
    "product_id": "product-id",
    "structure_id": "structure-id",
    "structure_abbrev": "structure-abbrev",
    "structure_name": "structure-name",
    "structure_color": "structure-color",
    "injection_structures": "injection-structures",
    "injection_coordinates": "injection-coordinates",
    "injection_volume": "injection-volume",
    "num_voxels": "num-voxels",
}


def allen_record(row: Any) -> dict[str, Any]:
    """A result row as Allen's service returns it (hyphenated keys, e.g. ``structure-abbrev``)."""
    return {ALLEN_FIELD_NAMES.get(f.name, f.name): getattr(row, f.name) for f in fields(row)}


# ------------------------------------------------------------------------------------------------ parsing
def parse_hemisphere(value: Any, name: str) -> int:
    """1 (left), 2 (right) or 3 (both) from Allen's 'left' / 'right' (or 'both', None, 1, 2, 3)."""
    if value is None:
        return HEMISPHERE_BOTH
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _HEMISPHERE_WORDS:
            return _HEMISPHERE_WORDS[key]
        if key in ("1", "2", "3"):
            return int(key)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) in (1, 2, 3):
        return int(value)
    raise SearchInputError(f"{name} must be 'left', 'right' or 'both' (1, 2, 3), got {value!r}")


def _as_list(value: Any) -> list[Any]:
    """A list from one value, a list, or Allen's comma-separated text."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return list(value)


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    raise SearchInputError(f"{name} must be true or false, got {value!r}")


def _check_threshold(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SearchInputError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(number) or number < 0:
        raise SearchInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


@lru_cache(maxsize=1)
def connectivity_grid() -> SearchGrid:
    """The 100 um grid of the bundled CCF 2017 annotation (cached)."""
    return SearchGrid.from_reference_space(ReferenceSpace.bundled(CONNECTIVITY_RESOLUTION_UM))


def create_projection_store(path: Any, *, encoding: str = "float32", grid: SearchGrid | None = None,
                            overwrite: bool = False) -> MatrixStore:
    """An empty projection-density store over the brain voxels of ``grid`` (default the 100 um grid:
    505,359 voxels). Append experiments with ``store.append(volumes_flat, ids, no_data_value=None)``, each row
    a volume raveled in Allen's flat order (``volume.ravel(order="F")``) or already over the store's columns."""
    grid = grid or connectivity_grid()
    return MatrixStore.create(path, grid.brain_voxels(), grid, encoding, kind="projection",
                              value_name="projection_density", metadata_columns=(), overwrite=overwrite)


# ------------------------------------------------------------------------------------------------ experiments
_EXPERIMENT_COLUMNS = ("injection_structures", "primary_injection_structure", "injection_x", "injection_y",
                       "injection_z", "injection_volume")


class ExperimentTable:
    """The experiments as arrays: ids, injection structures (as preorder positions), coordinates, lines;
    vectorized filters and the row fields."""

    def __init__(self, experiments: pd.DataFrame, grid: SearchGrid):
        frame = experiments
        if "id" in frame.columns:
            ids = frame["id"]
        elif frame.index.name in ("id", "experiment_id", "data_set_id"):
            ids = frame.index
        else:
            raise SearchInputError("the experiments table needs an 'id' column (or an index named 'id')")
        missing = [c for c in _EXPERIMENT_COLUMNS if c not in frame.columns]
        if missing:
            raise SearchInputError(f"the experiments table lacks column(s) {missing}")
        self.ids = np.asarray(ids, dtype=np.int64)
        if np.unique(self.ids).size != self.ids.size:
            raise SearchInputError("experiment ids repeat in the experiments table")
        self.index = pd.Index(self.ids)
        self.tree: StructureTree = grid.structure_tree
        self.order: OntologyOrder = grid.space.ontology_order
        self._order_index = pd.Index(self.order.ids)
        n = self.ids.size

        primary = frame["primary_injection_structure"].to_numpy(dtype=np.int64)
        self.primary = primary
        self.primary_position = self._positions(primary, "primary_injection_structure")
        lists = [[int(s) for s in _as_list(v)] for v in frame["injection_structures"].tolist()]
        lengths = np.fromiter((len(v) for v in lists), dtype=np.int64, count=n)
        flat = np.fromiter((s for v in lists for s in v), dtype=np.int64, count=int(lengths.sum()))
        self.injection_ids = lists
        self.injection_experiment = np.repeat(np.arange(n), lengths)
        self.injection_position = self._positions(flat, "injection_structures")

        self.coordinates = frame[["injection_x", "injection_y", "injection_z"]].to_numpy(dtype=np.float64)
        self.volume = frame["injection_volume"].to_numpy(dtype=np.float64)
        if "injection_hemisphere_id" in frame.columns:
            self.hemisphere = frame["injection_hemisphere_id"].to_numpy(dtype=np.int64)
        else:
            midline_um = grid.origin_um + midline_index(grid.shape[2]) * grid.resolution_um[2]
            self.hemisphere = np.where(self.coordinates[:, 2] < midline_um, HEMISPHERE_LEFT, HEMISPHERE_RIGHT)
        lines = frame["transgenic_line"] if "transgenic_line" in frame.columns else pd.Series([""] * n)
        self.transgenic_line = np.array(["" if pd.isna(v) else str(v) for v in lines], dtype=object)
        self._line_keys = np.array([v.lower() for v in self.transgenic_line], dtype=object)
        self.product_id = (frame["product_id"].to_numpy(dtype=np.int64) if "product_id" in frame.columns else None)
        self._text = {key: self._text_column(frame, columns) for key, columns in
                      (("name", ("specimen_name", "name")), ("strain", ("strain",)), ("gender", ("gender",)))}
        self._acronym = self.tree.get_acronym_map()
        self._name = self.tree.get_name_map()
        self._color = self.tree.get_hex_colormap()
        self._summaries: dict[int, tuple] = {}

    @staticmethod
    def _text_column(frame: pd.DataFrame, names: Sequence[str]) -> list[str | None]:
        for name in names:
            if name in frame.columns:
                return [None if pd.isna(v) else str(v) for v in frame[name]]
        return [None] * len(frame)

    def _positions(self, structure_ids: np.ndarray, column: str) -> np.ndarray:
        positions = self._order_index.get_indexer(structure_ids)
        if np.any(positions < 0):
            bad = sorted(set(np.asarray(structure_ids)[positions < 0].tolist()))[:5]
            raise UnknownStructureError(f"experiments table, column {column!r}: unknown structure id(s) {bad}")
        return positions.astype(np.int64)

    def __len__(self) -> int:
        return int(self.ids.size)

    def positions_of(self, experiment_ids: Any, what: str = "experiment") -> np.ndarray:
        """Table positions of experiment ids; :class:`UnknownDataSetError` naming unknown ones."""
        wanted = _as_list(experiment_ids)
        try:
            wanted_ids = np.asarray([operator.index(int(v)) for v in wanted], dtype=np.int64)
        except (TypeError, ValueError):
            raise UnknownDataSetError(f"not {what} id(s): {wanted!r}") from None
        positions = self.index.get_indexer(wanted_ids)
        if np.any(positions < 0):
            bad = wanted_ids[positions < 0][:10].tolist()
            raise UnknownDataSetError(f"unknown {what}(s) {bad}: not among the {len(self):,} experiments")
        return positions.astype(np.int64)

    # ------------------------------------------------------------------ filters
    def structure_ranges_mask(self, structure_ids: Sequence[int]) -> np.ndarray:
        """Boolean over preorder positions: the given structures and all their descendants."""
        inside = np.zeros(len(self.order.ids), dtype=bool)
        for p in self._order_index.get_indexer(np.asarray(structure_ids, dtype=np.int64)):
            inside[p : p + self.order.subtree_size[p]] = True
        return inside

    def select(self, grid: SearchGrid, *, transgenic_lines: Any = None, injection_structures: Any = None,
               primary_structure_only: Any = False, injection_hemisphere: Any = None,
               product_ids: Any = None, experiment_ids: Any = None) -> np.ndarray:
        """Boolean (n_experiments,): the experiments that pass every given filter (see the module docstring)."""
        keep = np.ones(len(self), dtype=bool)
        if injection_structures is not None:
            ids = grid.resolve_structures(injection_structures)
            inside = self.structure_ranges_mask(ids)
            if _as_bool(primary_structure_only, "primary_structure_only"):
                keep &= inside[self.primary_position]
            else:
                hit = np.zeros(len(self), dtype=bool)
                hit[self.injection_experiment[inside[self.injection_position]]] = True
                keep &= hit
        if transgenic_lines is not None:
            keep &= self._line_mask(transgenic_lines)
        hemisphere = parse_hemisphere(injection_hemisphere, "injection_hemisphere")
        if hemisphere != HEMISPHERE_BOTH:
            keep &= self.hemisphere == hemisphere
        if product_ids is not None:
            if self.product_id is None:
                raise SearchInputError("product_ids: the experiments table has no 'product_id' column")
            try:
                wanted = [int(v) for v in _as_list(product_ids)]
            except (TypeError, ValueError):
                raise SearchInputError(f"product_ids must be integers, got {product_ids!r}") from None
            keep &= np.isin(self.product_id, wanted)
        if experiment_ids is not None:
            chosen = np.zeros(len(self), dtype=bool)
            chosen[self.positions_of(experiment_ids, "data set")] = True
            keep &= chosen
        return keep

    def _line_mask(self, transgenic_lines: Any) -> np.ndarray:
        wanted = _as_list(transgenic_lines)
        if not wanted:
            raise SearchInputError("transgenic_lines is empty")
        keys: set[str] = set()
        known = set(self._line_keys.tolist())
        for value in wanted:
            if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
                if int(value) != 0:
                    raise SearchInputError(f"transgenic line {value!r}: lines are given by name (or 0 for wild type)")
                keys.add("")
                continue
            key = str(value).strip().lower()
            if key not in known:
                examples = sorted(v for v in known if v)[:8]
                raise SearchInputError(f"unknown transgenic line {value!r}; lines of these experiments include "
                                       f"{examples} (0 = wild type)")
            keys.add(key)
        return np.isin(self._line_keys, list(keys))

    # ------------------------------------------------------------------ row fields
    def summary(self, position: int) -> tuple:
        """The :class:`ExperimentSummary` fields of one experiment (cached)."""
        cached = self._summaries.get(position)
        if cached is None:
            primary = int(self.primary[position])
            structures = [{"id": s, "abbreviation": self._acronym.get(s), "name": self._name.get(s)}
                          for s in self.injection_ids[position]]
            product = None if self.product_id is None else int(self.product_id[position])
            cached = (int(self.ids[position]), self._text["name"][position], str(self.transgenic_line[position]),
                      self._text["strain"][position], self._text["gender"][position], product, primary,
                      self._acronym.get(primary), self._name.get(primary), self._color.get(primary), structures,
                      self.coordinates[position].tolist(), float(self.volume[position]),
                      int(self.hemisphere[position]))
            self._summaries[position] = cached
        return cached


# ------------------------------------------------------------------------------------------------ unionizes
class UnionizeCube:
    """The projection rows of a unionize table as dense (experiments, structures, hemispheres) arrays, one per
    metric, built on first use by a vectorized pivot (no row loop). Missing rows are NaN."""

    def __init__(self, unionizes: pd.DataFrame, experiment_ids: np.ndarray, order: OntologyOrder):
        missing = [c for c in ("experiment_id", "structure_id", "hemisphere_id", "is_injection") if c not in unionizes]
        if missing:
            raise SearchInputError(f"the unionize table lacks column(s) {missing}")
        self.frame = unionizes
        self.experiment_ids = np.asarray(experiment_ids, dtype=np.int64)
        self.order = order
        n_e, n_s = self.experiment_ids.size, len(order.ids)
        e = pd.Index(self.experiment_ids).get_indexer(unionizes["experiment_id"].to_numpy(dtype=np.int64))
        if np.any(e < 0):
            bad = sorted(set(unionizes["experiment_id"].to_numpy()[e < 0].tolist()))[:5]
            raise SearchInputError(f"unionize rows of experiment(s) {bad} that are not in the experiments table")
        s = pd.Index(order.ids).get_indexer(unionizes["structure_id"].to_numpy(dtype=np.int64))
        if np.any(s < 0):
            bad = sorted(set(unionizes["structure_id"].to_numpy()[s < 0].tolist()))[:5]
            raise UnknownStructureError(f"unionize rows of unknown structure id(s) {bad}")
        h = unionizes["hemisphere_id"].to_numpy(dtype=np.int64)
        if np.any((h < 1) | (h > 3)):
            raise SearchInputError("unionize hemisphere_id must be 1, 2 or 3")
        self._projection = ~unionizes["is_injection"].to_numpy(dtype=bool)
        self._cell = ((e * n_s + s) * 3 + (h - 1))[self._projection]
        self.shape = (n_e, n_s, 3)
        self.has_rows = np.bincount(e[self._projection], minlength=n_e) > 0
        self._cubes: dict[str, np.ndarray] = {}

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.frame.columns
                if c not in _UNIONIZE_KEYS and pd.api.types.is_numeric_dtype(self.frame[c])]

    def cube(self, metric: str) -> np.ndarray:
        """(experiments, structures in preorder, hemispheres 1..3) float64 of one metric, NaN where no row."""
        cube = self._cubes.get(metric)
        if cube is None:
            if metric not in self.metrics:
                raise SearchInputError(f"unknown unionize metric {metric!r}; one of {self.metrics}")
            values = self.frame[metric].to_numpy(dtype=np.float64)[self._projection]
            cube = np.full(int(np.prod(self.shape)), np.nan)
            cube[self._cell] = values
            cube = cube.reshape(self.shape)
            self._cubes[metric] = cube
        return cube


class ProjectionMatrix(NamedTuple):
    """AllenSDK's ``get_projection_matrix`` result: ``matrix`` (experiments x columns, NaN where no unionize row),
    ``rows`` (experiment ids) and ``columns`` (``{"hemisphere_id", "structure_id", "label"}``, hemisphere-major,
    labels ``VISp-L`` / ``VISp-R`` / ``VISp`` for hemispheres 1 / 2 / 3)."""

    matrix: np.ndarray
    rows: list[int]
    columns: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix, "rows": self.rows, "columns": self.columns}


_HEMISPHERE_LABEL = {1: "-L", 2: "-R", 3: ""}


def _matrix_columns(structure_ids: Sequence[int], hemisphere_ids: Sequence[int], tree: StructureTree) -> list[dict]:
    acronyms = tree.get_acronym_map()
    return [{"hemisphere_id": h, "structure_id": s, "label": f"{acronyms.get(s, s)}{_HEMISPHERE_LABEL[h]}"}
            for h in hemisphere_ids for s in structure_ids]


def _check_hemisphere_ids(hemisphere_ids: Any) -> list[int]:
    values = _as_list(hemisphere_ids)
    if not values:
        raise SearchInputError("hemisphere_ids is empty")
    out = [parse_hemisphere(v, "hemisphere_ids") for v in values]
    if len(set(out)) != len(out):
        raise SearchInputError(f"hemisphere_ids repeat: {values!r}")
    return out


def projection_matrix(unionizes: pd.DataFrame, experiment_ids: Sequence[int], structure_ids: Any,
                      hemisphere_ids: Any = None, parameter: str = "projection_volume",
                      structure_tree: StructureTree | None = None) -> ProjectionMatrix:
    """Experiments x (hemisphere, structure) matrix of one unionize metric from a unionize table, as AllenSDK's
    ``MouseConnectivityCache.get_projection_matrix`` (projection rows only; a vectorized pivot).

    ``structure_ids``: ids or acronyms (unknown ones raise :class:`UnknownStructureError`);
    ``hemisphere_ids``: default the hemispheres present in the table's rows of those structures (sorted);
    an experiment id with no projection row raises :class:`UnknownDataSetError`; repeated ids and an unknown
    ``parameter`` raise :class:`SearchInputError`.
    """
    tree = structure_tree or StructureTree.bundled()
    structures = _resolve_ids(tree, structure_ids)
    frame = unionizes
    for column in ("experiment_id", "structure_id", "hemisphere_id", "is_injection"):
        if column not in frame:
            raise SearchInputError(f"the unionize table lacks column {column!r}")
    if parameter not in frame or parameter in _UNIONIZE_KEYS or not pd.api.types.is_numeric_dtype(frame[parameter]):
        numeric = [c for c in frame.columns if c not in _UNIONIZE_KEYS and pd.api.types.is_numeric_dtype(frame[c])]
        raise SearchInputError(f"unknown unionize metric {parameter!r}; one of {numeric}")
    rows = [int(v) for v in _as_list(experiment_ids)]
    if len(set(rows)) != len(rows):
        raise SearchInputError("experiment_ids repeat")
    projection = ~frame["is_injection"].to_numpy(dtype=bool)
    experiment = frame["experiment_id"].to_numpy(dtype=np.int64)
    row_of = pd.Index(rows).get_indexer(experiment)
    present = np.zeros(len(rows), dtype=bool)
    present[row_of[(row_of >= 0) & projection]] = True
    if not present.all():
        bad = np.asarray(rows)[~present][:10].tolist()
        raise UnknownDataSetError(f"no projection unionize rows for experiment(s) {bad}")
    structure_of = pd.Index(structures).get_indexer(frame["structure_id"].to_numpy(dtype=np.int64))
    hemisphere = frame["hemisphere_id"].to_numpy(dtype=np.int64)
    if hemisphere_ids is None:
        chosen = projection & (row_of >= 0) & (structure_of >= 0)
        hemispheres = sorted(set(hemisphere[chosen].tolist())) or [HEMISPHERE_BOTH]
    else:
        hemispheres = _check_hemisphere_ids(hemisphere_ids)
    hemisphere_of = pd.Index(hemispheres).get_indexer(hemisphere)
    keep = projection & (row_of >= 0) & (structure_of >= 0) & (hemisphere_of >= 0)
    matrix = np.full((len(rows), len(hemispheres) * len(structures)), np.nan)
    values = frame[parameter].to_numpy(dtype=np.float64)
    matrix[row_of[keep], hemisphere_of[keep] * len(structures) + structure_of[keep]] = values[keep]
    return ProjectionMatrix(matrix, rows, _matrix_columns(structures, hemispheres, tree))


def _resolve_ids(tree: StructureTree, structures: Any) -> list[int]:
    """Structure ids from ids or acronyms (or names), in the order given, without repeats."""
    from brainmap.atlas.describe import resolve_structure

    items = [structures] if isinstance(structures, (str, int, np.integer)) else list(structures)
    if not items:
        raise SearchInputError("the list of structures is empty")
    out: list[int] = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise UnknownStructureError(f"not a structure: {item!r}")
        if isinstance(item, (int, np.integer)):
            out.append(int(tree.get_structures_by_id([int(item)])[0]["id"]))
        else:
            out.append(int(resolve_structure(tree, str(item))["id"]))
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------ paths
_OFFSETS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)],
                    dtype=np.int64)
_OFFSET_NORM = np.linalg.norm(_OFFSETS, axis=1)

#: ``values_at(path_indices, flat_voxels) -> densities``: NaN = no data, -1 = not a brain voxel.
ValuesAt = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Paths:
    """Many voxel paths, concatenated: path ``k`` is ``ijk[bounds[k]:bounds[k + 1]]`` with ``values`` there."""

    bounds: np.ndarray
    ijk: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.bounds.size - 1)

    def path(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.bounds[k]), int(self.bounds[k + 1])
        return self.ijk[a:b], self.values[a:b]


def flat_voxels(ijk: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Flat indices (Allen's raw order, AP fastest) of (..., 3) voxel indices."""
    ijk = np.asarray(ijk, dtype=np.int64)
    return ijk[..., 0] + shape[0] * (ijk[..., 1] + shape[1] * ijk[..., 2])


def densest_paths(values_at: ValuesAt, starts: np.ndarray, ends: np.ndarray, shape: Sequence[int]) -> Paths:
    """Walk from each start voxel to its end voxel through the densest voxels (see the module docstring).

    Parameters
    ----------
    values_at : callable
        ``values_at(k, flat)``: the density of path ``k``'s data at flat voxel indices ``flat`` (arrays of the
        same length); NaN where there is no data (counts as 0), -1 outside the brain (taken only when no brain
        voxel qualifies).
    starts, ends : (P, 3) voxel indices (AP, DV, LR) inside the grid
    shape : the grid's shape

    All P walks advance together, one vectorized step at a time. Each step goes to one of the 26 neighbours
    that is strictly nearer the end and within 60 degrees of its direction; the sign step ``sign(end - here)``
    always qualifies, so every walk arrives.
    """
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, 3)
    ends = np.asarray(ends, dtype=np.int64).reshape(-1, 3)
    shape_arr = np.asarray(shape, dtype=np.int64)
    n = starts.shape[0]
    if ends.shape != starts.shape:
        raise ValueError(f"starts {starts.shape} and ends {ends.shape} differ")
    if n and (np.any(starts < 0) | np.any(starts >= shape_arr) | np.any(ends < 0) | np.any(ends >= shape_arr)):
        raise ValueError("path ends must lie inside the grid")
    everyone = np.arange(n)
    record_k, record_ijk, record_v = [everyone], [starts], [values_at(everyone, flat_voxels(starts, shape))]
    current = starts.copy()
    active = np.flatnonzero(np.any(current != ends, axis=1))
    limit = 4 * int(np.abs(ends - starts).sum(axis=1).max(initial=0)) + 8  # never reached (see above)
    offsets, norms = _OFFSETS.astype(np.float64), _OFFSET_NORM
    for _ in range(limit):
        if active.size == 0:
            break
        here = current[active]
        towards = (ends[active] - here).astype(np.float64)
        distance = np.sqrt(np.einsum("ij,ij->i", towards, towards))
        dots = towards @ offsets.T  # (A, 26)
        cosine = dots / (distance[:, None] * norms[None, :])
        ok = (2.0 * dots > norms * norms) & (cosine > _CONE_COS)
        neighbours = here[:, None, :] + _OFFSETS[None, :, :]
        ok &= np.all((neighbours >= 0) & (neighbours < shape_arr), axis=2)
        a, o = np.nonzero(ok)
        found = values_at(active[a], flat_voxels(neighbours[a, o], shape))
        density = np.full(ok.shape, np.nan)
        density[a, o] = found
        key = np.full(ok.shape, -np.inf)
        key[a, o] = np.where(np.isnan(found), 0.0, found) + _TIE * cosine[a, o]
        best = np.argmax(key, axis=1)
        rows = np.arange(active.size)
        step = here + _OFFSETS[best]
        current[active] = step
        record_k.append(active)
        record_ijk.append(step)
        record_v.append(density[rows, best])
        active = active[np.any(step != ends[active], axis=1)]
    if active.size:  # pragma: no cover - impossible: every step brings a walk strictly nearer
        raise RuntimeError("a densest-path walk did not arrive")
    k = np.concatenate(record_k)
    order = np.argsort(k, kind="stable")  # records are in step order within each path
    bounds = np.concatenate(([0], np.cumsum(np.bincount(k, minlength=n))))
    values = np.concatenate(record_v)[order]
    values[values < 0] = np.nan  # outside the brain: no density
    return Paths(bounds, np.concatenate(record_ijk)[order], values)


def path_points(paths: Paths, resolution_um: Sequence[float] | np.ndarray,
                end_points_um: np.ndarray | None = None, origin_um: float = 0.0) -> list[list[dict[str, Any]]]:
    """Allen's ``path`` of every walk: ``[{"coord": [x, y, z], "density": d}, ...]`` (voxel centres in um, voxel 0's
    corner at ``origin_um``; density None where there is no data or outside the brain); the last coordinate of
    walk ``k`` is ``end_points_um[k]`` when given (its injection site). Built in one pass over all walks."""
    coords = origin_um + (paths.ijk + 0.5) * np.asarray(resolution_um, dtype=np.float64)
    if end_points_um is not None and len(paths):
        lengths = np.diff(paths.bounds)
        ends = paths.bounds[1:][lengths > 0] - 1
        coords[ends] = np.asarray(end_points_um, dtype=np.float64).reshape(-1, 3)[lengths > 0]
    values = paths.values.astype(object)
    values[np.isnan(paths.values)] = None
    points = [{"coord": c, "density": d} for c, d in zip(coords.tolist(), values.tolist())]
    return [points[a:b] for a, b in zip(paths.bounds[:-1].tolist(), paths.bounds[1:].tolist())]


def store_values_at(raw: np.ndarray, encoding: str, offset: np.ndarray, scale: np.ndarray, rows: np.ndarray,
                    column_of_voxel: np.ndarray) -> ValuesAt:
    """``values_at`` over a search matrix: path ``k`` reads matrix row ``rows[k]``; ``column_of_voxel`` maps flat
    voxels to store columns (-1: not a column, i.e. outside the brain)."""

    def values_at(k: np.ndarray, flat: np.ndarray) -> np.ndarray:
        columns = column_of_voxel[flat]
        out = np.full(flat.size, -1.0)
        ok = columns >= 0
        r = rows[k[ok]]
        codes = raw[r, columns[ok]]
        if encoding == "uint8":
            q = codes.astype(np.float64)
            values = offset[r] + scale[r] * q * q
            values[codes == 0] = np.nan
        else:
            values = codes.astype(np.float64)
        out[ok] = values
        return out

    return values_at


def volume_values_at(volume: np.ndarray, brain: np.ndarray) -> ValuesAt:
    """``values_at`` over one (AP, DV, LR) volume (every path reads it); ``brain`` marks the brain voxels."""
    flat_volume = np.asarray(volume, dtype=np.float64).ravel(order="F")
    flat_brain = np.asarray(brain, dtype=bool).ravel(order="F")

    def values_at(k: np.ndarray, flat: np.ndarray) -> np.ndarray:
        return np.where(flat_brain[flat], flat_volume[flat], -1.0)

    return values_at


def blocked_pearson_sums(raw: np.ndarray, encoding: str, plan: Any, seed: np.ndarray, centres: np.ndarray,
                         engine: str | None = None, threads: int | None = None,
                         chunk_stats: np.ndarray | None = None) -> np.ndarray:
    """:func:`brainmap.search._kernels.pearson_sums` (kept under this name: the kernel now blocks long rows itself,
    rows in groups over 2,048-column chunks of the seed, and centres every chunk on the row's own mean)."""
    return _kernels.pearson_sums(raw, encoding, plan, seed, centres, engine, threads, chunk_stats=chunk_stats)


def _pearson_task(block: Any, centres: Any, stats: Any, encoding: str, plan: Any, seed: np.ndarray,
                  engine: str) -> np.ndarray:
    stats = np.asarray(stats)  # flattened to 2-D so that dask aligns them with the rows
    return blocked_pearson_sums(np.asarray(block), encoding, plan, seed, np.asarray(centres).ravel(), engine,
                                threads=1, chunk_stats=stats.reshape(stats.shape[0], -1, 2))


def _walk_task(rows_source: Any, encoding: str, offset: np.ndarray, scale: np.ndarray, rows: np.ndarray,
               starts: np.ndarray, ends: np.ndarray, column_of_voxel: np.ndarray, shape: tuple) -> Paths:
    """The walks of some matrix rows, in whichever process holds (or maps) them (dask tasks call this)."""
    raw = np.asarray(rows_source[:, :])  # a StoreRows maps its file here (a view, no copy)
    return densest_paths(store_values_at(raw, encoding, offset, scale, rows, column_of_voxel), starts, ends, shape)


# ------------------------------------------------------------------------------------------------ the searches
class ConnectivitySearch:
    """The connectivity searches over one set of experiments (see the module docstring).

    Parameters
    ----------
    experiments : DataFrame (see the module docstring)
    unionizes : DataFrame of ProjectionStructureUnionize rows, optional (source and target searches, the
        projection matrix)
    store : MatrixStore of projection density on ``grid``, optional (spatial and correlation searches); its rows
        must all be experiments of the table
    grid : SearchGrid, default the 100 um grid
    engine, threads : the correlation pass's engine and threads (:class:`~brainmap.search.ExpressionSearch`)
    """

    def __init__(self, experiments: pd.DataFrame, unionizes: pd.DataFrame | None = None,
                 store: MatrixStore | None = None, grid: SearchGrid | None = None, engine: str | None = None,
                 threads: int | None = None):
        self.grid = grid or connectivity_grid()
        self.experiments = ExperimentTable(experiments, self.grid)
        self.unionizes = (None if unionizes is None
                          else UnionizeCube(unionizes, self.experiments.ids, self.experiments.order))
        self.store = store
        self._expr: ExpressionSearch | None = None
        self._column_of_voxel: np.ndarray | None = None
        if store is not None:
            if store.grid != GridSpec.of(self.grid):
                raise ValueError(f"store {store.path} is on grid {store.grid}, not {GridSpec.of(self.grid)}")
            positions = self.experiments.index.get_indexer(store.data_set_ids)
            if np.any(positions < 0):
                bad = store.data_set_ids[positions < 0][:5].tolist()
                raise SearchInputError(f"store {store.path} has rows of experiment(s) {bad} not in the experiments table")
            self.row_experiment = positions.astype(np.int64)
            self._expr = ExpressionSearch(store, self.grid, engine, threads)
        self._engine = _kernels.resolve_engine(engine)
        self._threads = threads

    # ------------------------------------------------------------------ helpers
    def _need_store(self, what: str) -> MatrixStore:
        if self.store is None or self._expr is None:
            raise MissingSearchDataError(f"a {what} needs the projection-density search store (search/connectivity "
                                         f"in the data directory), and there is none: {BUILD_HINT}")
        return self.store

    def _need_unionizes(self, what: str) -> UnionizeCube:
        if self.unionizes is None:
            raise MissingSearchDataError(f"a {what} needs the experiments' ProjectionStructureUnionize rows, and there "
                                         "are none: brainmap load the data sets' structure_unionizes.csv")
        return self.unionizes

    def _filters(self, **filters: Any) -> np.ndarray:
        return self.experiments.select(self.grid, **filters)

    @property
    def column_of_voxel(self) -> np.ndarray:
        """Flat grid voxel -> store column (-1 where the voxel is not a column)."""
        if self._column_of_voxel is None:
            store = self._need_store("path")
            lookup = np.full(self.grid.n_voxels, -1, dtype=np.int64)
            lookup[store.columns] = np.arange(store.n_columns)
            self._column_of_voxel = lookup
        return self._column_of_voxel

    def _seed_voxel(self, seed_point: Any) -> int:
        return self.grid.voxel_at_point(seed_point)  # SearchInputError outside the grid or the brain

    def _injection_voxels(self, positions: np.ndarray) -> np.ndarray:
        ijk = self.grid.voxels_containing(self.experiments.coordinates[positions])
        return np.clip(ijk, 0, np.asarray(self.grid.shape) - 1)

    def _decode_column(self, codes: np.ndarray) -> np.ndarray:
        store = self._need_store("spatial search")
        if store.encoding == "uint8":
            q = codes.astype(np.float64)
            values = store.row_offset + store.row_scale * q * q
            values[codes == 0] = np.nan
            return values
        return codes.astype(np.float64)

    # Matrix access: overridden by DistributedConnectivitySearch.
    def _column_values(self, column: int) -> np.ndarray:
        """Every row's projection density at one store column (float64, NaN = no data)."""
        return self._decode_column(np.asarray(self._need_store("spatial search").raw[:, column]))

    def _walk_rows(self, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Paths:
        store = self._need_store("path")
        return densest_paths(store_values_at(store.raw, store.encoding, store.row_offset, store.row_scale, rows,
                                             self.column_of_voxel), starts, ends, self.grid.shape)

    def _pearson_sums(self, plan: CorrelationPlan, centres: np.ndarray) -> np.ndarray:
        store = self._need_store("correlation search")
        return blocked_pearson_sums(store.raw, store.encoding, plan.plan, plan.seed_values, centres, self._engine,
                                    self._threads, chunk_stats=store.chunk_stats)

    def _correlation_sums(self, plan: CorrelationPlan) -> np.ndarray:
        """The shared Pearson pass of :mod:`brainmap.search._kernels`: one pass, which centres every 2,048-column
        chunk of a row on the row's own mean over the domain voxels there that have data (the store's row centre
        -- the row's mean over the whole brain, dominated by the injection site -- is only the float64 reference
        the sums are reported about). Far from the injection, e.g. over the cerebellum for a VISp injection, a
        row's values are ~400 times below that centre, and float32 sums about it lost 0.15 in r; the distributed
        search only overrides the pass."""
        return self._pearson_sums(plan, self._need_store("correlation search").row_center)

    # ------------------------------------------------------------------ source and target
    def _target_sums(self, target_domain: Any, target_hemisphere: Any, metric: str) -> tuple[np.ndarray, int]:
        """Per experiment, ``metric`` summed over the target structures (descendants of other listed ones dropped:
        their rows are inside their ancestors'), NaN where the experiment has no row there; and the number of
        grid voxels of the domain."""
        cube = self._need_unionizes("target search").cube(metric)
        ids = self.grid.resolve_structures(ROOT_ID if target_domain is None else target_domain)
        hemisphere = parse_hemisphere(target_hemisphere, "target_hemisphere")
        table = self.experiments
        positions = table._order_index.get_indexer(np.asarray(ids, dtype=np.int64))
        covered = np.zeros(len(table.order.ids), dtype=bool)
        for p in positions:  # drop structures inside another listed one
            covered[p + 1 : p + table.order.subtree_size[p]] = True
        positions = positions[~covered[positions]]
        values = cube[:, positions, hemisphere - 1]
        has = ~np.isnan(values)
        if not has.any():
            raise SearchInputError(f"the target domain {target_domain!r} (hemisphere {hemisphere}) has no unionize "
                                   "rows in any experiment: an empty domain")
        sums = np.where(has.any(axis=1), np.nansum(values, axis=1), np.nan)
        num_voxels = int(self.grid.structure_voxels(ids, hemisphere).size)
        return sums, num_voxels

    def _experiment_ranking(self, keep: np.ndarray, sums: np.ndarray, num_voxels: int, sort_by: str,
                            description: str) -> Ranking[ExperimentRow]:
        table = self.experiments
        if sort_by not in ("sum", "injection_volume"):
            raise SearchInputError(f"sort_by must be 'sum' or 'injection_volume', got {sort_by!r}")
        score = (sums if sort_by == "sum" else table.volume).astype(np.float64).copy()
        if sort_by == "sum":
            score[np.isnan(score)] = -np.inf  # no rows: last, but kept
        score[~keep] = np.nan
        order = rank_order(score, table.ids, descending=True)

        def make_rows(positions: np.ndarray) -> list[ExperimentRow]:
            return [ExperimentRow(*table.summary(int(p)), float(sums[p]), num_voxels) for p in positions]

        return Ranking(order, lambda p: make_rows(np.array([p]))[0], description, make_rows)

    def source(self, injection_structures: Any, *, primary_structure_only: Any = False, transgenic_lines: Any = None,
               injection_hemisphere: Any = None, product_ids: Any = None, target_domain: Any = None,
               target_hemisphere: Any = None, sort_by: str = "injection_volume") -> Ranking[ExperimentRow]:
        """Experiments injected in ``injection_structures`` (ids, acronyms or names) or their descendants, by
        injection volume (``sort_by="sum"``: by projection volume in the target domain), descending."""
        if injection_structures is None:
            raise SearchInputError("a source search needs injection_structures")
        keep = self._filters(transgenic_lines=transgenic_lines, injection_structures=injection_structures,
                             primary_structure_only=primary_structure_only,
                             injection_hemisphere=injection_hemisphere, product_ids=product_ids)
        if self.unionizes is not None:
            sums, num_voxels = self._target_sums(target_domain, target_hemisphere, "projection_volume")
        else:
            sums, num_voxels = np.full(len(self.experiments), np.nan), 0
        return self._experiment_ranking(keep, sums, num_voxels, sort_by,
                                        f"experiments injected in {injection_structures!r}")

    def target(self, target_domain: Any, *, target_hemisphere: Any = None, injection_structures: Any = None,
               primary_structure_only: Any = False, transgenic_lines: Any = None, injection_hemisphere: Any = None,
               product_ids: Any = None, metric: str = "projection_volume",
               target_threshold: Any = DEFAULT_TARGET_THRESHOLD, sort_by: str = "sum") -> Ranking[ExperimentRow]:
        """Experiments ranked by ``metric`` (projection volume; or e.g. normalized_projection_volume) summed over
        the target structures' own unionize rows in ``target_hemisphere``, descending; experiments whose sum is
        not above ``target_threshold`` are left out."""
        if target_domain is None:
            raise SearchInputError("a target search needs a target_domain")
        threshold = _check_threshold(target_threshold, "target_threshold")
        sums, num_voxels = self._target_sums(target_domain, target_hemisphere, metric)
        keep = self._filters(transgenic_lines=transgenic_lines, injection_structures=injection_structures,
                             primary_structure_only=primary_structure_only,
                             injection_hemisphere=injection_hemisphere, product_ids=product_ids)
        with np.errstate(invalid="ignore"):
            keep &= sums > threshold
        return self._experiment_ranking(keep, sums, num_voxels, sort_by, f"{metric} in {target_domain!r}")

    # ------------------------------------------------------------------ spatial
    def spatial(self, seed_point: Any, *, threshold: Any = DEFAULT_SPATIAL_THRESHOLD, transgenic_lines: Any = None,
                section_data_sets: Any = None, injection_structures: Any = None, primary_structure_only: Any = False,
                injection_hemisphere: Any = None, product_ids: Any = None, paths: bool = True) -> Ranking[SpatialRow]:
        """Experiments with projection density >= ``threshold`` at ``seed_point`` (um, AP/DV/LR), densest first,
        each with its path from the seed to its injection site (built for the rows of a page only)."""
        store = self._need_store("spatial search")
        threshold = _check_threshold(threshold, "threshold")
        voxel = self._seed_voxel(seed_point)
        column = int(self.column_of_voxel[voxel])
        if column < 0:
            raise SearchInputError(f"seed point {list(seed_point)} um (voxel {self.grid.voxel_ijk(voxel).tolist()}) "
                                   f"is not one of the store's {store.n_columns:,} voxels")
        density = self._column_values(column)
        keep = self._filters(transgenic_lines=transgenic_lines, injection_structures=injection_structures,
                             primary_structure_only=primary_structure_only, injection_hemisphere=injection_hemisphere,
                             product_ids=product_ids, experiment_ids=section_data_sets)[self.row_experiment]
        with np.errstate(invalid="ignore"):
            score = np.where(keep & (density >= threshold), density, np.nan)
        order = rank_order(score, store.data_set_ids, descending=True)
        seed_ijk = self.grid.voxel_ijk(voxel)
        table = self.experiments

        def make_rows(positions: np.ndarray) -> list[SpatialRow]:
            positions = np.asarray(positions, dtype=np.int64)
            experiments = self.row_experiment[positions]
            routes: list[Any] = [None] * positions.size
            if paths and positions.size:
                walked = self._walk_rows(positions, np.repeat(seed_ijk[None, :], positions.size, axis=0),
                                         self._injection_voxels(experiments))
                routes = path_points(walked, self.grid.resolution_um, table.coordinates[experiments],
                                     self.grid.origin_um)
            return [SpatialRow(*table.summary(e), float(density[p]), route)
                    for p, e, route in zip(positions.tolist(), experiments.tolist(), routes)]

        return Ranking(order, lambda p: make_rows(np.array([p]))[0],
                       f"projection density >= {threshold:g} at {list(seed_point)} um", make_rows)

    def path(self, experiment_id: Any, seed_point: Any) -> list[dict[str, Any]]:
        """The path of one experiment from ``seed_point`` to its injection site (whatever its density there)."""
        store = self._need_store("path")
        row = store.row_index(experiment_id)
        voxel = self._seed_voxel(seed_point)
        e = self.row_experiment[row]
        walked = self._walk_rows(np.array([row]), self.grid.voxel_ijk(voxel)[None, :],
                                 self._injection_voxels(np.array([e])))
        return path_points(walked, self.grid.resolution_um, self.experiments.coordinates[[e]], self.grid.origin_um)[0]

    # ------------------------------------------------------------------ injection coordinate
    def injection_coordinate(self, seed_point: Any, *, transgenic_lines: Any = None, injection_structures: Any = None,
                             primary_structure_only: Any = False, injection_hemisphere: Any = None,
                             product_ids: Any = None,
                             injection_distance_threshold: Any = None) -> Ranking[InjectionCoordinateRow]:
        """Experiments by the distance (um) from their injection site to ``seed_point``, nearest first."""
        self._seed_voxel(seed_point)
        point = np.asarray(seed_point, dtype=np.float64).reshape(3)
        table = self.experiments
        keep = self._filters(transgenic_lines=transgenic_lines, injection_structures=injection_structures,
                             primary_structure_only=primary_structure_only, injection_hemisphere=injection_hemisphere,
                             product_ids=product_ids)
        difference = table.coordinates - point
        distance = np.sqrt(np.einsum("ij,ij->i", difference, difference))
        if injection_distance_threshold is not None:
            keep &= distance <= _check_threshold(injection_distance_threshold, "injection_distance_threshold")
        order = rank_order(np.where(keep, distance, np.nan), table.ids, descending=False)

        def make_rows(positions: np.ndarray) -> list[InjectionCoordinateRow]:
            return [InjectionCoordinateRow(*table.summary(int(p)), float(distance[p])) for p in positions]

        return Ranking(order, lambda p: make_rows(np.array([p]))[0], f"injection sites nearest {point.tolist()} um",
                       make_rows)

    # ------------------------------------------------------------------ correlation
    def correlation(self, row: Any, structures: Any = None, *, hemisphere: Any = None, transgenic_lines: Any = None,
                    injection_structures: Any = None, primary_structure_only: Any = False,
                    injection_hemisphere: Any = None, product_ids: Any = None, sort_order: str = "desc",
                    min_voxels: int = 3) -> Ranking[ConnectivityCorrelationRow]:
        """Pearson's r of every experiment's projection density with experiment ``row``'s over the domain
        (``structures`` with descendants, default the brain; ``hemisphere`` 'left' / 'right'), by the shared
        correlation pass of :mod:`brainmap.search.expression`."""
        store = self._need_store("correlation search")
        assert self._expr is not None
        plan = self._expr.plan_correlation(row, structures, min_voxels, sort_order)
        side = parse_hemisphere(hemisphere, "hemisphere")
        if side != HEMISPHERE_BOTH:
            plan = self._hemisphere_plan(plan, side, structures)
        keep = self._filters(transgenic_lines=transgenic_lines, injection_structures=injection_structures,
                             primary_structure_only=primary_structure_only, injection_hemisphere=injection_hemisphere,
                             product_ids=product_ids)[self.row_experiment]
        keep[plan.seed_row] = True  # Allen keeps the seed whatever the filters
        r, n = pearson_from_sums(self._correlation_sums(plan), plan.min_voxels)
        r[~keep] = np.nan
        order = rank_order(r, store.data_set_ids, plan.descending)
        table = self.experiments

        def make_rows(positions: np.ndarray) -> list[ConnectivityCorrelationRow]:
            return [ConnectivityCorrelationRow(*table.summary(int(self.row_experiment[p])), float(r[p]), int(n[p]))
                    for p in positions]

        return Ranking(order, lambda p: make_rows(np.array([p]))[0],
                       f"correlation with experiment {store.data_set_ids[plan.seed_row]} over {plan.plan.cols.size} "
                       "voxels", make_rows)

    def _hemisphere_plan(self, plan: CorrelationPlan, side: int, structures: Any) -> CorrelationPlan:
        """The plan restricted to one hemisphere's columns (Pearson's r does not depend on the seed's centring)."""
        lr = self.grid.voxel_ijk(self.store.columns[plan.plan.cols])[:, 2]  # type: ignore[union-attr]
        left = lr < midline_index(self.grid.shape[2])
        inside = left if side == HEMISPHERE_LEFT else ~left
        if inside.sum() < plan.min_voxels:
            raise SearchInputError(f"the domain {structures!r} has {int(inside.sum())} voxel(s) with seed data in "
                                   f"hemisphere {side}; at least {plan.min_voxels} are needed")
        seed = plan.seed_values[inside] - plan.seed_values[inside].mean()  # re-centred: float32 sums stay exact
        spread = np.abs(seed).max()
        if spread == 0:
            raise SearchInputError(f"the seed is constant over the domain {structures!r} in hemisphere {side}")
        return CorrelationPlan(plan.seed_row, _kernels.ColumnPlan.of(plan.plan.cols[inside]), seed / spread,
                               plan.min_voxels, plan.descending)

    # ------------------------------------------------------------------ projection matrix
    def projection_matrix(self, experiment_ids: Sequence[int], structure_ids: Any, hemisphere_ids: Any = None,
                          parameter: str = "projection_volume") -> ProjectionMatrix:
        """:func:`projection_matrix` from the index's unionize cube (a gather, no pivot per call); hemispheres
        default to 1 and 2 (left, right)."""
        cube = self._need_unionizes("projection matrix").cube(parameter)
        positions = self.experiments.positions_of(experiment_ids)
        ids = _resolve_ids(self.experiments.tree, structure_ids)
        structures = self.experiments._order_index.get_indexer(np.asarray(ids, dtype=np.int64))
        hemispheres = _check_hemisphere_ids([1, 2] if hemisphere_ids is None else hemisphere_ids)
        if len(set(positions.tolist())) != positions.size:
            raise SearchInputError("experiment_ids repeat")
        block = cube[positions][:, structures][:, :, np.asarray(hemispheres) - 1]  # (E, S, H)
        matrix = np.ascontiguousarray(block.transpose(0, 2, 1)).reshape(positions.size, -1)
        return ProjectionMatrix(matrix, self.experiments.ids[positions].tolist(),
                                _matrix_columns(ids, hemispheres, self.experiments.tree))


# ------------------------------------------------------------------------------------------------ dask
class DistributedConnectivitySearch(ConnectivitySearch):
    """:class:`ConnectivitySearch` whose matrix passes run on a dask cluster over the store chunked by rows: the
    seed column of a spatial search (one task per chunk), the paths of a page (one task per chunk holding page
    rows; each worker maps the store file itself, so no matrix data goes through the scheduler) and the two
    correlation passes (the chunks of :func:`brainmap.search.distributed.store_array`). Table searches
    (source, target, injection coordinate, projection matrix) run locally. Same results as the local search.
    """

    def __init__(self, experiments: pd.DataFrame, unionizes: pd.DataFrame | None = None,
                 store: MatrixStore | None = None, client: Any = None, grid: SearchGrid | None = None,
                 engine: str | None = None, chunk_rows: int | None = None):
        from brainmap.search.distributed import DEFAULT_CHUNK_ROWS, StoreRows, store_array

        super().__init__(experiments, unionizes, store, grid, engine, threads=1)
        if store is None:
            raise BrainmapError("a distributed connectivity search needs a projection-density store")
        self.client = client
        self.matrix = store_array(store, chunk_rows or DEFAULT_CHUNK_ROWS)
        self._rows_source = StoreRows.of(store)
        self._shared_lookup: Any = None

    def _share(self, value: Any) -> Any:
        """Send an argument to the workers once (not once per task) when there is a client."""
        return value if self.client is None else self.client.scatter(value, broadcast=True, hash=False)

    def _pearson_sums(self, plan: CorrelationPlan, centres: np.ndarray) -> np.ndarray:
        import dask.array as da

        store = self._need_store("correlation search")
        encoding, engine = store.encoding, self._engine
        centre_blocks = da.from_array(centres[:, None], chunks=(self.matrix.chunks[0], 1))
        flat = store.chunk_stats.reshape(store.n_rows, -1)
        stats_blocks = da.from_array(flat, chunks=(self.matrix.chunks[0], flat.shape[1]))
        sums = da.map_blocks(_pearson_task, self.matrix, centre_blocks, stats_blocks, encoding, self._share(plan.plan),
                             self._share(plan.seed_values), engine, dtype=np.float64,
                             chunks=(self.matrix.chunks[0], (6,)))
        return np.asarray(self._compute([sums])[0])

    def _compute(self, tasks: list[Any]) -> list[Any]:
        import dask

        if self.client is None:
            return list(dask.compute(*tasks))
        return self.client.gather(self.client.compute(tasks))

    def _column_values(self, column: int) -> np.ndarray:
        codes = self._compute([self.matrix[:, column]])[0]
        return self._decode_column(np.asarray(codes))

    def _walk_rows(self, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Paths:
        import dask

        store = self._need_store("path")
        if self._shared_lookup is None:
            lookup = self.column_of_voxel.astype(np.int32)
            self._shared_lookup = (lookup if self.client is None
                                   else self.client.scatter(lookup, broadcast=True, hash=False))
        bounds = np.cumsum((0,) + tuple(self.matrix.chunks[0]))
        chunk_of = np.searchsorted(bounds, rows, side="right") - 1
        groups = [np.flatnonzero(chunk_of == c) for c in np.unique(chunk_of)]
        tasks = [dask.delayed(_walk_task, pure=False)(self._rows_source, store.encoding, store.row_offset,
                                                      store.row_scale, rows[g], starts[g], ends[g],
                                                      self._shared_lookup, self.grid.shape) for g in groups]
        parts = self._compute(tasks)
        return _merge_paths(groups, parts, rows.size)


def _merge_paths(groups: list[np.ndarray], parts: list[Paths], n: int) -> Paths:
    """Paths of several groups (positions ``groups[i]`` of ``n`` walks) back in walk order."""
    lengths = np.zeros(n, dtype=np.int64)
    for g, part in zip(groups, parts):
        lengths[g] = np.diff(part.bounds)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    ijk = np.empty((int(bounds[-1]), 3), dtype=np.int64)
    values = np.empty(int(bounds[-1]))
    for g, part in zip(groups, parts):
        for j, k in enumerate(g.tolist()):
            a, b = part.bounds[j], part.bounds[j + 1]
            ijk[bounds[k] : bounds[k + 1]] = part.ijk[a:b]
            values[bounds[k] : bounds[k + 1]] = part.values[a:b]
    return Paths(bounds, ijk, values)


# ------------------------------------------------------------------------------------------------ Allen's services
SERVICES = ("mouse_connectivity_injection_structure", "mouse_connectivity_target_spatial",
            "mouse_connectivity_injection_coordinate", "mouse_connectivity_correlation")

_FILTER_PARAMETERS = ("transgenic_lines", "injection_structures", "primary_structure_only", "product_ids")


def _seed_point(value: Any) -> Any:
    return _as_list(value) if isinstance(value, str) else value


def run_service(search: ConnectivitySearch, service: str, **parameters: Any) -> SearchPage:
    """One page of one of Allen's connectivity services, called with Allen's parameter names (values as Python
    objects or as Allen's text: ``"VISp,MOp"``, ``"true"``, ``"6900,5050,6450"``). See the module docstring."""
    params = dict(parameters)
    start_row, num_rows = check_page(params.pop("start_row", 0), params.pop("num_rows", DEFAULT_NUM_ROWS))
    filters = {name: params.pop(name) for name in _FILTER_PARAMETERS if name in params}
    if "primary_structure_only" in filters:
        filters["primary_structure_only"] = _as_bool(filters["primary_structure_only"], "primary_structure_only")
    if isinstance(filters.get("injection_structures"), str):  # Allen's "VISp,MOp"
        filters["injection_structures"] = _as_list(filters["injection_structures"])
    ranking: Ranking
    if service == "mouse_connectivity_injection_structure":
        injection_hemisphere = params.pop("injection_hemisphere", None)
        target_domain = params.pop("target_domain", None)
        target_hemisphere = params.pop("target_hemisphere", None)
        _no_more(service, params)
        if target_domain is not None:
            ranking = search.target(_as_list(target_domain) if isinstance(target_domain, str) else target_domain,
                                    target_hemisphere=target_hemisphere, injection_hemisphere=injection_hemisphere,
                                    **filters)
        else:
            ranking = search.source(filters.pop("injection_structures", None),
                                    injection_hemisphere=injection_hemisphere, **filters)
    elif service == "mouse_connectivity_target_spatial":
        seed = _seed_point(params.pop("seed_point", None))
        data_sets = params.pop("section_data_set", None)
        data_sets = params.pop("section_data_sets", data_sets)
        _no_more(service, params)
        ranking = search.spatial(seed, section_data_sets=data_sets, **filters)
    elif service == "mouse_connectivity_injection_coordinate":
        seed = _seed_point(params.pop("seed_point", None))
        distance = params.pop("injection_distance_threshold", None)
        _no_more(service, params)
        ranking = search.injection_coordinate(seed, injection_distance_threshold=distance, **filters)
    elif service == "mouse_connectivity_correlation":
        row = params.pop("row", None)
        structures = params.pop("structures", None)
        hemisphere = params.pop("hemisphere", None)
        sort_order = params.pop("sort_order", "desc")
        _no_more(service, params)
        if row is None:
            raise SearchInputError("mouse_connectivity_correlation needs row (the seed experiment id)")
        ranking = search.correlation(row, _as_list(structures) if isinstance(structures, str) else structures,
                                     hemisphere=hemisphere, sort_order=sort_order, **filters)
    else:
        raise SearchInputError(f"unknown connectivity service {service!r}; one of {list(SERVICES)}")
    return ranking.page(start_row, num_rows)


def _no_more(service: str, params: dict[str, Any]) -> None:
    if params:
        raise SearchInputError(f"{service}: unknown parameter(s) {sorted(params)}")


__all__ = [
    "ALLEN_FIELD_NAMES",
    "CONNECTIVITY_RESOLUTION_UM",
    "ConnectivityCorrelationRow",
    "ConnectivitySearch",
    "DEFAULT_SPATIAL_THRESHOLD",
    "DistributedConnectivitySearch",
    "ExperimentRow",
    "ExperimentSummary",
    "ExperimentTable",
    "FIBER_TRACTS_ID",
    "InjectionCoordinateRow",
    "Paths",
    "ProjectionMatrix",
    "SERVICES",
    "SpatialRow",
    "UnionizeCube",
    "allen_record",
    "blocked_pearson_sums",
    "connectivity_grid",
    "create_projection_store",
    "densest_paths",
    "flat_voxels",
    "parse_hemisphere",
    "path_points",
    "projection_matrix",
    "run_service",
    "store_values_at",
    "volume_values_at",
]
