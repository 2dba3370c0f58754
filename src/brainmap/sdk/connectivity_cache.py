"""``MouseConnectivityCache``: AllenSDK's class of the same name over a brainmap server or Allen's API.

    from brainmap.sdk import MouseConnectivityCache

    mcc = MouseConnectivityCache(resolution=100, manifest_file="connectivity/manifest.json")
    tree = mcc.get_structure_tree()
    isocortex = tree.get_structures_by_name(["Isocortex"])[0]["id"]
    experiments = mcc.get_experiments(cre=False, injection_structure_ids=[isocortex])
    pd_volume, header = mcc.get_projection_density(experiments[0]["id"])     # (AP, DV, LR), PIR, 100 um
    unionizes = mcc.get_structure_unionizes([e["id"] for e in experiments], is_injection=False)
    pm = mcc.get_projection_matrix([e["id"] for e in experiments], [385, 409], hemisphere_ids=[1, 2])

Files (relative to the manifest's folder; the resolution is in every resolution-dependent path):
``experiments.json`` (the source search over ``root``), ``experiment_{id}/structure_unionizes.columns`` (a column
table, :mod:`brainmap.sdk.tables`), ``experiment_{id}/{volume}_{resolution}.nrrd``,
``experiment_{id}/alignment3d.json``, plus :class:`~brainmap.sdk.reference_space_cache.ReferenceSpaceCache`'s.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import pandas as pd

from brainmap.io.nrrd import read_nrrd
from brainmap.sdk.errors import SdkError
from brainmap.sdk.reference_space_cache import REFERENCE_SPACE_ENTRIES, ReferenceSpaceCache
from brainmap.sdk.tables import concat_tables, records_to_columns, to_dataframe
from brainmap.sdk.unionizes import filter_unionizes, projection_matrix, rank_unionizes

__all__ = ["MouseConnectivityCache", "experiment_record"]

CONNECTIVITY_ENTRIES = {
    **REFERENCE_SPACE_ENTRIES,
    "EXPERIMENTS": "experiments.json",
    "STRUCTURE_UNIONIZES": "experiment_{experiment_id}/structure_unionizes.columns",
    "VOLUME": "experiment_{experiment_id}/{volume}_{resolution}.nrrd",
    "ALIGNMENT3D": "experiment_{experiment_id}/alignment3d.json",
    "DEFORMATION_FIELD_HEADER": "experiment_{experiment_id}/dfmfld.mhd",
    "DEFORMATION_FIELD_VOXELS": "experiment_{experiment_id}/dfmfld.raw",
}
#: Experiments per unionize query when filling the cache (keeps URLs short).
_IDS_PER_QUERY = 100
#: The unionize columns (Allen's, ``section_data_set_id`` renamed ``experiment_id``).
UNIONIZE_COLUMNS = ("id", "experiment_id", "structure_id", "hemisphere_id", "is_injection", "max_voxel_density",
                    "max_voxel_x", "max_voxel_y", "max_voxel_z", "normalized_projection_volume",
                    "projection_density", "projection_energy", "projection_intensity", "projection_volume",
                    "sum_pixel_intensity", "sum_pixels", "sum_projection_pixel_intensity", "sum_projection_pixels",
                    "volume")


def experiment_record(row: dict[str, Any]) -> dict[str, Any]:
    """One experiment as AllenSDK's cache gives it, from a source-search row (Allen's hyphenated keys)."""
    coordinates = row.get("injection-coordinates") or [None, None, None]
    return {
        "id": int(row["id"]),
        "structure_id": row.get("structure-id"),
        "structure_abbrev": row.get("structure-abbrev"),
        "structure_name": row.get("structure-name"),
        "injection_structures": [s["id"] if isinstance(s, dict) else s
                                 for s in row.get("injection-structures") or []],
        "injection_x": coordinates[0], "injection_y": coordinates[1], "injection_z": coordinates[2],
        "injection_volume": row.get("injection-volume"),
        "gender": row.get("gender"),
        "strain": row.get("strain"),
        "transgenic_line": row.get("transgenic-line") or None,
        "product_id": row.get("product-id"),
        "specimen_name": row.get("name"),
        "primary_injection_structure": row.get("structure-id"),
    }


def _unionize_table(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A unionize table in Allen's column order (then any other columns), also when there are no rows."""
    if not rows:
        return {c: np.zeros(0, dtype=np.int64 if c in ("id", "experiment_id", "structure_id", "hemisphere_id")
                            else bool if c == "is_injection" else np.float64) for c in UNIONIZE_COLUMNS}
    columns = [c for c in UNIONIZE_COLUMNS if c in rows[0]] + [c for c in rows[0] if c not in UNIONIZE_COLUMNS]
    return records_to_columns(rows, columns)


class MouseConnectivityCache(ReferenceSpaceCache):
    """Cached connectivity data of one server (see the module docstring).

    ``resolution``: of the grid volumes and the annotation (10, 25, 50 or 100 um; default 25);
    ``manifest_file``: the manifest (its folder holds the cache); ``base_uri``: the server (default the local
    brainmap server, or ``$BRAINMAP_API_URL``); ``cache``, ``offline``, ``verify``, ``progress``: see
    :mod:`brainmap.sdk.cache`. ``ccf_version`` is the annotation's folder (default ``annotation/ccf_2017``).
    """

    def __init__(self, resolution: int | None = None, cache: bool = True,
                 manifest_file: str | os.PathLike[str] = "mouse_connectivity_manifest.json",
                 ccf_version: str | None = None, base_uri: str | None = None, version: Any = None, *,
                 offline: bool = False, progress: bool | None = None, verify: str = "quick",
                 rate_limit: float | None = None) -> None:
        super().__init__(25 if resolution is None else resolution, ccf_version or "annotation/ccf_2017",
                         manifest_file, version, base_uri, cache, offline=offline, progress=progress,
                         verify=verify, rate_limit=rate_limit, entries=CONNECTIVITY_ENTRIES)
        self._default_structure_ids: list[int] | None = None

    # -- experiments ---------------------------------------------------------------------------------------------
    def get_experiments(self, dataframe: bool = False, file_name: str | None = None, cre: Any = None,
                        injection_structure_ids: Iterable[int] | None = None) -> list[dict[str, Any]] | pd.DataFrame:
        """Every connectivity experiment (the source search over the whole brain, cached), filtered.

        ``cre``: None all; True Cre lines only; False wild type only; a list of line names (case-insensitive).
        ``injection_structure_ids``: experiments whose primary injection structure is one of these or their
        descendants. Returns a list of dicts, or with ``dataframe`` a DataFrame indexed by ``id``.
        """
        path = self.store.path("EXPERIMENTS", file_name) if self.store.cache or file_name else None
        url = self.api.build_query_url(self.api.service_stage("mouse_connectivity_injection_structure",
                                                              [("injection_structures", "root")]))
        rows = self.store.json("the experiments", path, url,
                               lambda: self.api.experiment_source_search(injection_structures="root"))
        experiments = [experiment_record(row) for row in rows]
        experiments = self._filter_experiments(experiments, cre, injection_structure_ids)
        if dataframe:
            frame = pd.DataFrame(experiments)
            if not frame.empty:
                frame = frame.set_index("id", drop=False)
                frame.index.name = None
            return frame
        return experiments

    def filter_experiments(self, experiments: list[dict[str, Any]], cre: Any = None,
                           injection_structure_ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Experiments (from :meth:`get_experiments`) filtered by Cre line and primary injection structure."""
        return self._filter_experiments(list(experiments), cre, injection_structure_ids)

    def _filter_experiments(self, experiments: list[dict[str, Any]], cre: Any,
                            injection_structure_ids: Iterable[int] | None) -> list[dict[str, Any]]:
        if cre is True:
            experiments = [e for e in experiments if e["transgenic_line"]]
        elif cre is False:
            experiments = [e for e in experiments if not e["transgenic_line"]]
        elif cre is not None:
            if isinstance(cre, str):
                cre = [cre]
            lines = {str(c).lower() for c in cre if c}
            wild = any(not c for c in cre)
            experiments = [e for e in experiments if (e["transgenic_line"] or "").lower() in lines
                           or (wild and not e["transgenic_line"])]
        if injection_structure_ids is not None:
            ids = [int(i) for i in ([injection_structure_ids] if isinstance(injection_structure_ids, int)
                                    else injection_structure_ids)]
            tree = self.get_structure_tree()
            allowed = {d for group in tree.descendant_ids(ids) for d in group}
            experiments = [e for e in experiments if e["structure_id"] in allowed]
        return experiments

    # -- unionizes ------------------------------------------------------------------------------------------------
    def _unionize_url(self, experiment_id: int) -> str:
        return self.api.build_query_url(f"model::ProjectionStructureUnionize,rma::criteria,"
                                        f"[section_data_set_id$eq{experiment_id}]")

    def _unionize_tables(self, experiment_ids: list[int], columns: list[str] | None = None
                         ) -> list[dict[str, np.ndarray]]:
        """The cached table of each experiment (only ``columns`` if given); the missing ones fetched in one
        paged query (online) or reported missing together (offline)."""
        paths = {i: self.store.path("STRUCTURE_UNIONIZES", experiment_id=i) for i in dict.fromkeys(experiment_ids)}
        found = {i: self.store.cached_table(path, columns) for i, path in paths.items()}
        missing = [i for i, table in found.items() if table is None]
        if missing and self.offline:
            from brainmap.sdk.errors import OfflineError

            raise OfflineError(f"the structure unionizes of {len(missing)} experiment(s)",
                               [(paths[i], self._unionize_url(i)) for i in missing])
        if missing:
            grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
            fetched = [row for k in range(0, len(missing), _IDS_PER_QUERY)  # short URLs, paged answers
                       for row in self.api.get_structure_unionizes(missing[k:k + _IDS_PER_QUERY])]
            for row in fetched:
                row = dict(row)
                row["experiment_id"] = row.pop("section_data_set_id")
                grouped[int(row["experiment_id"])].append(row)
            for i in missing:
                table = _unionize_table(grouped[i])
                self.store.save_table(paths[i], table, self._unionize_url(i))
                found[i] = table if columns is None else {c: table[c] for c in columns}
        return [found[i] for i in experiment_ids]

    def _fetch_unionizes(self, experiment_id: int) -> dict[str, np.ndarray]:
        rows = [dict(r) for r in self.api.get_structure_unionizes([experiment_id])]
        for row in rows:
            row["experiment_id"] = row.pop("section_data_set_id")
        return _unionize_table(rows)

    def get_experiment_structure_unionizes(self, experiment_id: int, file_name: str | None = None,
                                           is_injection: bool | None = None, structure_ids: Any = None,
                                           include_descendants: bool = False, hemisphere_ids: Any = None
                                           ) -> pd.DataFrame:
        """The ProjectionStructureUnionize rows of one experiment (a DataFrame, ``experiment_id`` column),
        filtered as :meth:`filter_structure_unionizes`."""
        experiment_id = int(experiment_id)
        if file_name is not None:
            path = self.store.path("STRUCTURE_UNIONIZES", file_name)
            url = self._unionize_url(experiment_id)
            table = self.store.table(f"the structure unionizes of experiment {experiment_id}", path, url,
                                     lambda: self._fetch_unionizes(experiment_id))
        else:
            table = self._unionize_tables([experiment_id])[0]
        return self.filter_structure_unionizes(to_dataframe(table), is_injection, structure_ids,
                                               include_descendants, hemisphere_ids)

    def get_structure_unionizes(self, experiment_ids: Iterable[int], is_injection: bool | None = None,
                                structure_ids: Any = None, include_descendants: bool = False,
                                hemisphere_ids: Any = None) -> pd.DataFrame:
        """The unionize rows of several experiments, concatenated and filtered."""
        ids = [int(i) for i in experiment_ids]
        tables = self._unionize_tables(ids)
        frame = to_dataframe(concat_tables(tables)) if tables else pd.DataFrame(columns=list(UNIONIZE_COLUMNS))
        return self.filter_structure_unionizes(frame, is_injection, structure_ids, include_descendants,
                                               hemisphere_ids)

    def filter_structure_unionizes(self, unionizes: pd.DataFrame, is_injection: bool | None = None,
                                   structure_ids: Any = None, include_descendants: bool = False,
                                   hemisphere_ids: Any = None) -> pd.DataFrame:
        """Rows that are injection (True) or projection (False) rows, of ``structure_ids`` (with descendants when
        ``include_descendants``), of ``hemisphere_ids`` (1 left, 2 right, 3 both)."""
        tree = self.get_structure_tree() if include_descendants else None
        return filter_unionizes(unionizes, is_injection, structure_ids, include_descendants, hemisphere_ids, tree)

    @property
    def default_structure_ids(self) -> list[int]:
        """The summary structures (structure set 167587189), AllenSDK's default for :meth:`rank_structures` and
        :meth:`get_projection_matrix`."""
        if self._default_structure_ids is None:
            self._default_structure_ids = self.get_structure_tree().summary_structure_ids()
        return self._default_structure_ids

    def rank_structures(self, experiment_ids: Iterable[int], is_injection: bool, structure_ids: Any = None,
                        hemisphere_ids: Any = None, rank_on: str = "normalized_projection_volume", n: int = 5,
                        threshold: float = 10**-2) -> list[list[dict[str, Any]]]:
        """For each experiment, its ``n`` unionize rows of largest ``rank_on`` above ``threshold``; as AllenSDK,
        of the summary structures (:attr:`default_structure_ids`) and hemispheres 1 and 2 unless given."""
        ids = [int(i) for i in experiment_ids]
        structure_ids = self.default_structure_ids if structure_ids is None else structure_ids
        hemisphere_ids = [1, 2] if hemisphere_ids is None else hemisphere_ids
        out = []
        for experiment_id, table in zip(ids, self._unionize_tables(ids)):
            frame = filter_unionizes(to_dataframe(table), is_injection, structure_ids, False, hemisphere_ids)
            out.append(rank_unionizes(frame, rank_on, n, threshold))
        return out

    def get_projection_matrix(self, experiment_ids: Iterable[int], projection_structure_ids: Any = None,
                              hemisphere_ids: Any = None, parameter: str = "projection_volume",
                              dataframe: bool = False) -> dict[str, Any]:
        """``{"matrix", "rows", "columns"}``: ``parameter`` of each experiment's projection (non-injection)
        unionize rows, experiments x (hemisphere, structure) columns, NaN where there is no row. ``columns`` are
        ``{hemisphere_id, structure_id, label}`` (label ``VISp-L``), hemisphere-major. With ``dataframe`` the
        matrix is a DataFrame (index the experiment ids, columns the labels). Vectorized (one pivot)."""
        ids = [int(i) for i in experiment_ids]
        if projection_structure_ids is None:  # AllenSDK's default: the summary structures
            projection_structure_ids = self.default_structure_ids
        tables = self._unionize_tables(ids, ["experiment_id", "structure_id", "hemisphere_id", "is_injection",
                                             parameter] if parameter in UNIONIZE_COLUMNS else None)
        structures = self.structure_rows()
        matrix, columns = projection_matrix(tables, ids, projection_structure_ids, hemisphere_ids, parameter,
                                            {int(s["id"]): s["acronym"] for s in structures},
                                            {int(s["id"]): s["graph_order"] for s in structures})
        if dataframe:
            matrix = pd.DataFrame(matrix, index=ids, columns=[c["label"] for c in columns])
        return {"matrix": matrix, "rows": ids, "columns": columns}

    # -- volumes --------------------------------------------------------------------------------------------------
    def _volume(self, volume: str, experiment_id: int, file_name: str | None) -> tuple[np.ndarray, dict[str, Any]]:
        experiment_id = int(experiment_id)
        path = self.store.path("VOLUME", file_name, experiment_id=experiment_id, volume=volume,
                               resolution=self.resolution)
        url = self.api.projection_grid_url(experiment_id, volume, self.resolution)
        return read_nrrd(self.store.file(f"the {volume} of experiment {experiment_id} at {self.resolution} um",
                                         url, path))

    def get_projection_density(self, experiment_id: int, file_name: str | None = None
                               ) -> tuple[np.ndarray, dict[str, Any]]:
        """``(volume, header)``: projection pixels / all pixels per voxel, (AP, DV, LR) = PIR, ``resolution``."""
        return self._volume("projection_density", experiment_id, file_name)

    def get_injection_density(self, experiment_id: int, file_name: str | None = None
                              ) -> tuple[np.ndarray, dict[str, Any]]:
        """``(volume, header)``: projection pixels in the injection site / all pixels per voxel."""
        return self._volume("injection_density", experiment_id, file_name)

    def get_injection_fraction(self, experiment_id: int, file_name: str | None = None
                               ) -> tuple[np.ndarray, dict[str, Any]]:
        """``(volume, header)``: fraction of each voxel's pixels in the annotated injection site."""
        return self._volume("injection_fraction", experiment_id, file_name)

    def get_data_mask(self, experiment_id: int, file_name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """``(volume, header)``: 1 where the voxel has valid data."""
        return self._volume("data_mask", experiment_id, file_name)

    # -- alignment ------------------------------------------------------------------------------------------------
    def get_deformation_field(self, section_data_set_id: int, header_path: str | None = None,
                              voxel_path: str | None = None) -> np.ndarray:
        """The data set's deformation field as AllenSDK returns it (SimpleITK's array order): float
        ``(nLR, nDV, nAP, 3)``, per CCF grid point the displacement ``(AP, DV, LR)`` microns to the
        affine-aligned point (grid origin and spacing in the header, ``experiment_{id}/dfmfld.mhd``)."""
        from brainmap.io.metaimage import read_metaimage
        from brainmap.sdk.errors import ApiError

        section_data_set_id = int(section_data_set_id)
        header = self.store.path("DEFORMATION_FIELD_HEADER", header_path, experiment_id=section_data_set_id)
        voxels = self.store.path("DEFORMATION_FIELD_VOXELS", voxel_path, experiment_id=section_data_set_id)
        if not (self.store.verified(header) and self.store.verified(voxels)):
            types = ("DeformationFieldHeader", "DeformationFieldVoxels")
            rows = [] if self.store.offline else self.api.model_query(
                "WellKnownFile", criteria=f"[attachable_id$eq{section_data_set_id}],"
                f"well_known_file_type[name$in'{types[0]}','{types[1]}']", include="well_known_file_type")
            links = {r["well_known_file_type"]["name"]: self.api.http.base_uri + r["download_link"] for r in rows}
            if not self.store.offline and not all(t in links for t in types):
                raise ApiError(f"SectionDataSet {section_data_set_id} has no deformation field (DeformationFieldHeader/"
                               "Voxels) on this server: it was aligned without the non-linear stage, or not aligned",
                               url=self.api.build_query_url("model::WellKnownFile"), status=404)
            for kind, path in zip(types, (header, voxels)):
                self.store.file(f"the {kind} of data set {section_data_set_id}", links.get(kind, ""), path)
        field, _ = read_metaimage(header)
        return np.ascontiguousarray(field.transpose(2, 1, 0, 3))

    def get_affine_parameters(self, section_data_set_id: int, direction: str = "trv", file_name: str | None = None
                              ) -> np.ndarray:
        """The 3-D affine of a data set as a 4 x 3 array: rows 0-2 the linear part, row 3 the translation (um).
        ``direction`` ``"trv"`` maps reference to volume (section) space, ``"tvr"`` the inverse."""
        if direction not in ("trv", "tvr"):
            raise SdkError(f"direction must be 'trv' (reference -> volume) or 'tvr' (volume -> reference), got "
                           f"{direction!r}")
        section_data_set_id = int(section_data_set_id)
        path = self.store.path("ALIGNMENT3D", file_name, experiment_id=section_data_set_id) \
            if self.store.cache or file_name else None
        url = self.api.build_query_url(f"model::Alignment3d,rma::criteria,[section_data_set_id$eq"
                                       f"{section_data_set_id}]")
        row = self.store.json(f"the alignment of data set {section_data_set_id}", path, url,
                              lambda: self.api.download_alignment3d(section_data_set_id))
        return np.array([row[f"{direction}_{k:02d}"] for k in range(12)], dtype=np.float64).reshape(4, 3)
