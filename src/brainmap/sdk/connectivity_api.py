"""``MouseConnectivityApi``: experiments, structure unionizes, grid volumes and the connectivity searches of the
Allen Mouse Brain Connectivity Atlas, with AllenSDK's method names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from brainmap.sdk.download import DownloadResult
from brainmap.sdk.grid_data import GridDataApi, ReferenceSpaceApi

__all__ = ["MouseConnectivityApi"]


def _ids(values: Any) -> list[int]:
    if values is None:
        return []
    if isinstance(values, (int, str)):
        values = [values]
    return [int(v) for v in values]


class MouseConnectivityApi(GridDataApi, ReferenceSpaceApi):
    """HTTP client of the connectivity atlas (a brainmap server or Allen's API)."""

    PRODUCT_IDS = [5, 31]

    # -- the search services ------------------------------------------------------------------------------------
    def experiment_source_search(self, num_rows: Any = "all", **kwargs: Any) -> list[dict[str, Any]]:
        """``service::mouse_connectivity_injection_structure``: experiments by injection structure
        (``injection_structures``, ``primary_structure_only``, ``transgenic_lines``, ``injection_hemisphere``;
        with ``target_domain`` / ``target_hemisphere`` a target search). Rows have Allen's hyphenated keys."""
        return self.service_query("mouse_connectivity_injection_structure", num_rows=num_rows, **kwargs)

    def experiment_target_search(self, num_rows: Any = "all", **kwargs: Any) -> list[dict[str, Any]]:
        """The target search: :meth:`experiment_source_search` with a ``target_domain``."""
        return self.experiment_source_search(num_rows=num_rows, **kwargs)

    def experiment_spatial_search(self, num_rows: Any = "all", **kwargs: Any) -> list[dict[str, Any]]:
        """``service::mouse_connectivity_target_spatial``: experiments with projection density at
        ``seed_point`` (um, [AP, DV, LR]); each row's ``path`` runs from the seed to the injection site."""
        return self.service_query("mouse_connectivity_target_spatial", num_rows=num_rows, **kwargs)

    def experiment_injection_coordinate_search(self, num_rows: Any = "all", **kwargs: Any) -> list[dict[str, Any]]:
        """``service::mouse_connectivity_injection_coordinate``: experiments by distance (um) of their injection
        site from ``seed_point``."""
        return self.service_query("mouse_connectivity_injection_coordinate", num_rows=num_rows, **kwargs)

    def experiment_correlation_search(self, num_rows: Any = "all", **kwargs: Any) -> list[dict[str, Any]]:
        """``service::mouse_connectivity_correlation``: experiments by Pearson's r of projection density with
        the seed experiment ``row`` over ``structures``."""
        return self.service_query("mouse_connectivity_correlation", num_rows=num_rows, **kwargs)

    def get_experiments(self, structure_ids: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """Experiments injected in ``structure_ids`` (ids or acronyms, descendants included): the source search."""
        ids = structure_ids if isinstance(structure_ids, (list, tuple)) else [structure_ids]
        return self.experiment_source_search(injection_structures=list(ids), **kwargs)

    # -- unionizes ----------------------------------------------------------------------------------------------
    def get_structure_unionizes(self, experiment_ids: Any, is_injection: bool | None = None,
                                structure_name: str | None = None, structure_ids: Iterable[int] | None = None,
                                hemisphere_ids: Iterable[int] | None = None,
                                normalized_projection_volume_limit: float | None = None,
                                include: Any = None, debug: Any = None, order: Any = None,
                                num_rows: Any = "all") -> list[dict[str, Any]]:
        """ProjectionStructureUnionize rows of the experiments (Allen's columns; ``section_data_set_id`` is the
        experiment id), optionally only injection / projection rows, some structures or hemispheres, or rows
        whose normalized projection volume is above a limit."""
        criteria = [f"[section_data_set_id$in{','.join(map(str, _ids(experiment_ids)))}]"]
        if is_injection is not None:
            criteria.append(f"[is_injection$eq{'true' if is_injection else 'false'}]")
        if structure_ids is not None:
            criteria.append(f"[structure_id$in{','.join(map(str, _ids(structure_ids)))}]")
        if hemisphere_ids is not None:
            criteria.append(f"[hemisphere_id$in{','.join(map(str, _ids(hemisphere_ids)))}]")
        if normalized_projection_volume_limit is not None:
            criteria.append(f"[normalized_projection_volume$gt{float(normalized_projection_volume_limit)}]")
        if structure_name is not None:
            criteria.append(f"structure[name$eq'{structure_name}']")
        return self.model_query("ProjectionStructureUnionize", criteria=",".join(criteria), include=include,
                                order=order, num_rows=num_rows)

    # -- grid volumes -------------------------------------------------------------------------------------------
    def _download(self, image: str, path: str | Path, experiment_id: int, resolution: int) -> DownloadResult:
        return self.download_projection_grid_data(experiment_id, [image], resolution, path)

    def download_projection_density(self, path: str | Path, experiment_id: int, resolution: int) -> DownloadResult:
        """projection_density (detected projection pixels / all pixels, per voxel) as NRRD to ``path``."""
        return self._download(self.PROJECTION_DENSITY, path, experiment_id, resolution)

    def download_injection_density(self, path: str | Path, experiment_id: int, resolution: int) -> DownloadResult:
        """injection_density (projection pixels inside the annotated injection site / all pixels) to ``path``."""
        return self._download(self.INJECTION_DENSITY, path, experiment_id, resolution)

    def download_injection_fraction(self, path: str | Path, experiment_id: int, resolution: int) -> DownloadResult:
        """injection_fraction (fraction of pixels in the annotated injection site) to ``path``."""
        return self._download(self.INJECTION_FRACTION, path, experiment_id, resolution)

    def download_data_mask(self, path: str | Path, experiment_id: int, resolution: int) -> DownloadResult:
        """data_mask (1 where a voxel has valid data) to ``path``."""
        return self._download(self.DATA_MASK, path, experiment_id, resolution)
