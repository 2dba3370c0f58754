"""The ISH (gene expression) side: ``MouseIshApi`` (experiments, unionizes, grids and the expression search
services) and ``MouseIshCache`` (the same, cached under a manifest).

    from brainmap.sdk import MouseIshCache

    ish = MouseIshCache(manifest_file="ish/manifest.json")
    experiments = ish.get_experiments(genes=["Pdyn"], plane_of_section="sagittal")
    energy, header = ish.get_expression_volume(experiments[0]["id"], "energy")    # 200 um grid, -1 = no data
    top = ish.api.differential_search("TH", "Isocortex")                            # the search services

Files: ``ish_experiments.json``, ``ish_experiment_{id}/grid_{resolution}.zip`` (Allen's grid-data zip of
``energy``, ``density`` and ``intensity`` MetaImages), ``ish_experiment_{id}/structure_unionizes.columns``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from brainmap.sdk.cache import Cache
from brainmap.sdk.errors import SdkError
from brainmap.sdk.grid_data import GridDataApi
from brainmap.sdk.tables import concat_tables, records_to_columns, to_dataframe

__all__ = ["MouseIshApi", "MouseIshCache"]

ISH_PRODUCT_ID = 1
#: The expression grid (um).
ISH_GRID_RESOLUTION = 200
_PLANES = {1: "coronal", 2: "sagittal"}
GRID_VOLUMES = ("energy", "density", "intensity")

ISH_ENTRIES = {
    "EXPERIMENTS": "ish_experiments.json",
    "GRID": "ish_experiment_{experiment_id}/grid_{resolution}.zip",
    "STRUCTURE_UNIONIZES": "ish_experiment_{experiment_id}/structure_unionizes.columns",
}


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, int)) else list(value)


class MouseIshApi(GridDataApi):
    """ISH data sets and the expression searches (``set`` is ``"mouse"`` (sagittal) or ``"mouse_coronal"``)."""

    def get_experiments(self, num_rows: Any = "all") -> list[dict[str, Any]]:
        """ISH SectionDataSets (product 1) with their genes."""
        return self.model_query("SectionDataSet", criteria=f"products[id$eq{ISH_PRODUCT_ID}]", include="genes",
                                num_rows=num_rows)

    def get_structure_unionizes(self, section_data_set_ids: Any, num_rows: Any = "all") -> list[dict[str, Any]]:
        """StructureUnionize rows (expression energy and density per structure) of the data sets."""
        ids = ",".join(str(int(i)) for i in _values(section_data_set_ids))
        return self.model_query("StructureUnionize", criteria=f"[section_data_set_id$in{ids}]", num_rows=num_rows)

    def differential_search(self, structures1: Any, structures2: Any, threshold1: Any = None, threshold2: Any = None,
                            set: str = "mouse", num_rows: Any = "all") -> list[dict[str, Any]]:
        """``service::mouse_differential``: data sets by fold change of expression, ``structures1`` over
        ``structures2`` (ids or acronyms)."""
        return self.service_query("mouse_differential", num_rows=num_rows, set=set, structures1=structures1,
                                  structures2=structures2, threshold1=threshold1, threshold2=threshold2)

    def correlation_search(self, row: int, structures: Any = None, sort_order: str = "desc", set: str = "mouse",
                           num_rows: Any = "all") -> list[dict[str, Any]]:
        """``service::mouse_correlation``: data sets by Pearson's r with data set ``row`` over ``structures``."""
        return self.service_query("mouse_correlation", num_rows=num_rows, set=set, row=int(row),
                                  structures=structures, sort_order=sort_order)

    def agea_search(self, seed_point: Iterable[float], structures: Any = None, set: str = "mouse",
                    num_rows: Any = "all") -> list[dict[str, Any]]:
        """``service::mouse_agea``: voxels by correlation with the seed voxel (um, [AP, DV, LR]) across data sets."""
        return self.service_query("mouse_agea", num_rows=num_rows, set=set, seed_point=list(seed_point),
                                  structures=structures)


class MouseIshCache:
    """Cached ISH data of one server (``base_uri``, ``manifest_file``, ``cache``, ``offline``, ``verify``,
    ``progress`` as :class:`~brainmap.sdk.MouseConnectivityCache`)."""

    def __init__(self, cache: bool = True, manifest_file: str | os.PathLike[str] = "mouse_ish_manifest.json",
                 base_uri: str | None = None, *, offline: bool = False, progress: bool | None = None,
                 verify: str = "quick", rate_limit: float | None = None) -> None:
        self.resolution = ISH_GRID_RESOLUTION
        self.api = MouseIshApi(base_uri, progress=progress, rate_limit=rate_limit)
        self.store = Cache(self.api, manifest_file, ISH_ENTRIES, cache=cache, offline=offline, verify=verify)

    def get_experiments(self, dataframe: bool = False, file_name: str | None = None, genes: Any = None,
                        plane_of_section: str | None = None, include_failed: bool = False
                        ) -> list[dict[str, Any]] | pd.DataFrame:
        """ISH experiments: ``id``, ``gene`` (acronym), ``gene_id``, ``plane_of_section``, ``failed``,
        ``section_thickness``; filtered by gene acronyms (case-insensitive) and plane; failed ones left out
        unless ``include_failed``."""
        path = self.store.path("EXPERIMENTS", file_name) if self.store.cache or file_name else None
        url = self.api.build_query_url(f"model::SectionDataSet,rma::criteria,products[id$eq{ISH_PRODUCT_ID}],"
                                       "rma::include,genes")
        rows = self.store.json("the ISH experiments", path, url, self.api.get_experiments)
        experiments = []
        for row in rows:
            gene = (row.get("genes") or [{}])[0]
            experiments.append({"id": row["id"], "gene": gene.get("acronym"), "gene_id": gene.get("id"),
                                "plane_of_section": _PLANES.get(row.get("plane_of_section_id")),
                                "failed": bool(row.get("failed")), "section_thickness": row.get("section_thickness"),
                                "reference_space_id": row.get("reference_space_id")})
        wanted = {g.lower() for g in _values(genes)}
        if plane_of_section is not None and plane_of_section not in ("coronal", "sagittal"):
            raise SdkError(f"plane_of_section must be 'coronal' or 'sagittal', got {plane_of_section!r}")
        experiments = [e for e in experiments if (include_failed or not e["failed"])
                       and (not wanted or (e["gene"] or "").lower() in wanted)
                       and (plane_of_section is None or e["plane_of_section"] == plane_of_section)]
        if dataframe:
            frame = pd.DataFrame(experiments)
            return frame.set_index("id", drop=False).rename_axis(None) if not frame.empty else frame
        return experiments

    def get_expression_volume(self, section_data_set_id: int, volume: str = "energy", file_name: str | None = None
                              ) -> tuple[np.ndarray, dict[str, Any]]:
        """``(array, header)`` of ``volume`` (energy, density or intensity) on the 200 um grid, (AP, DV, LR);
        -1 marks voxels without data. The header has ``ElementSpacing`` (um) and ``Offset``."""
        from brainmap.io.grid_bundle import read_grid_bundle

        if volume not in GRID_VOLUMES:
            raise SdkError(f"volume must be one of {', '.join(GRID_VOLUMES)}, got {volume!r}")
        section_data_set_id = int(section_data_set_id)
        path = self.store.path("GRID", file_name, experiment_id=section_data_set_id, resolution=self.resolution)
        url = self.api.expression_grid_url(section_data_set_id, list(GRID_VOLUMES))
        self.store.file(f"the expression grids of data set {section_data_set_id}", url, path)
        volumes = read_grid_bundle(path)
        data = volumes[volume]
        array, header = data if isinstance(data, tuple) else (data, None)
        meta = {"ElementSpacing": list(getattr(header, "element_spacing", (self.resolution,) * 3)),
                "Offset": list(getattr(header, "offset", (0.0, 0.0, 0.0)) or (0.0, 0.0, 0.0)),
                "DimSize": list(np.asarray(array).shape)}
        return np.asarray(array), meta

    def get_structure_unionizes(self, section_data_set_ids: Iterable[int]) -> pd.DataFrame:
        """StructureUnionize rows of the data sets (cached per data set), concatenated."""
        tables = []
        for i in (int(x) for x in section_data_set_ids):
            path = self.store.path("STRUCTURE_UNIONIZES", experiment_id=i)
            url = self.api.build_query_url(f"model::StructureUnionize,rma::criteria,[section_data_set_id$eq{i}]")
            tables.append(self.store.table(f"the structure unionizes of data set {i}", path, url,
                                           lambda i=i: records_to_columns(self.api.get_structure_unionizes([i]))))
        tables = [t for t in tables if t and len(next(iter(t.values())))]
        return to_dataframe(concat_tables(tables)) if tables else pd.DataFrame()


class MouseAtlasApi(MouseIshApi):
    """AllenSDK's ``MouseAtlasApi``: ISH data sets, genes and the 200 um expression grids."""

    MOUSE_ATLAS_PRODUCTS = (ISH_PRODUCT_ID,)
    MOUSE_ORGANISM = (2,)

    def get_section_data_sets(self, gene_ids: Any = None, product_ids: Any = None, **kwargs: Any
                              ) -> list[dict[str, Any]]:
        """SectionDataSets of the products (default the Mouse Brain atlas, 1), with their genes."""
        products = ",".join(str(int(p)) for p in (_values(product_ids) or self.MOUSE_ATLAS_PRODUCTS))
        criteria = f"products[id$in{products}]"
        if gene_ids is not None:
            criteria += f",genes[id$in{','.join(str(int(g)) for g in _values(gene_ids))}]"
        return self.model_query("SectionDataSet", criteria=criteria, include="genes",
                                order=kwargs.pop("order", ["id"]), num_rows=kwargs.pop("num_rows", "all"),
                                **kwargs)

    def get_genes(self, organism_ids: Any = None, chromosome_ids: Any = None, **kwargs: Any
                  ) -> list[dict[str, Any]]:
        """Genes of the organisms (default mouse, 2), each with its chromosome (null where not held)."""
        organisms = ",".join(str(int(o)) for o in (_values(organism_ids) or self.MOUSE_ORGANISM))
        criteria = f"[organism_id$in{organisms}]"
        if chromosome_ids is not None:
            criteria += f",[chromosome_id$in{','.join(str(int(c)) for c in _values(chromosome_ids))}]"
        return self.model_query("Gene", criteria=criteria, include="chromosome",
                                order=kwargs.pop("order", ["id"]), num_rows=kwargs.pop("num_rows", "all"),
                                **kwargs)

    def _expression(self, path: str, experiment_id: int, volume: str) -> Any:
        """Download one grid volume next to ``path`` and read it as AllenSDK does: ``(array (AP, DV, LR),
        information)``."""
        from brainmap.io.metaimage import read_metaimage

        self.download_gene_expression_grid_data(experiment_id, volume, path)
        data, header = read_metaimage(Path(path).with_name(f"{volume}.mhd"))
        return data, {"spacing": tuple(header.element_spacing), "origin": tuple(header.offset or ())}

    def download_expression_density(self, path: str, experiment_id: int) -> Any:
        return self._expression(path, experiment_id, self.DENSITY)

    def download_expression_energy(self, path: str, experiment_id: int) -> Any:
        return self._expression(path, experiment_id, self.ENERGY)

    def download_expression_intensity(self, path: str, experiment_id: int) -> Any:
        return self._expression(path, experiment_id, self.INTENSITY)
