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
        """Experiments injected in ``structure_ids`` (ids or acronyms, descendants included): the source search.
        ``structure_ids=None``: every connectivity SectionDataSet that did not fail (AllenSDK's query)."""
        if structure_ids is None:
            products = ",".join(str(p) for p in self.PRODUCT_IDS)
            return self.model_query("SectionDataSet", criteria=f"[failed$eqfalse],products[id$in{products}]",
                                    **({"num_rows": "all"} | kwargs))
        ids = structure_ids if isinstance(structure_ids, (list, tuple)) else [structure_ids]
        return self.experiment_source_search(injection_structures=list(ids), **kwargs)

    def get_experiments_api(self) -> list[dict[str, Any]]:
        """Allen's ``ApiConnectivity`` rows: one per experiment (``data_set_id``, ``structure_id``,
        ``injection_structures`` "/"-joined, ``injection_x/y/z``, ``transgenic_line`` ...)."""
        return self.model_query("ApiConnectivity", num_rows="all")

    def get_manual_injection_summary(self, experiment_id: int) -> list[dict[str, Any]]:
        """An experiment with its specimen, donor (transgenic mouse and lines), injections (structure, age),
        equalization and products, as AllenSDK asks for them."""
        include = ["specimen(donor(transgenic_mouse(transgenic_lines)),", "injections(structure,age)),",
                   "equalization,products"]
        only = ["id", "failed", "storage_directory", "red_lower", "red_upper", "green_lower", "green_upper",
                "blue_lower", "blue_upper", "products.id", "specimen_id", "structure_id", "reference_space_id",
                "primary_injection_structure_id", "registration_point", "coordinates_ap", "coordinates_dv",
                "coordinates_ml", "angle", "sex", "strain", "injection_materials", "acronym", "structures.name",
                "days", "transgenic_mice.name", "transgenic_lines.name", "transgenic_lines.description",
                "transgenic_lines.id", "donors.id"]
        return self.model_query("SectionDataSet", criteria=f"[id$in{int(experiment_id)}]", include="".join(include),
                                only=only)

    def get_experiment_detail(self, experiment_id: int) -> list[dict[str, Any]]:
        """An experiment with its specimen's stereotaxic injections, equalization and section images in order."""
        include = ("specimen(stereotaxic_injections(primary_injection_structure,structures,"
                   "stereotaxic_injection_coordinates)),equalization,sub_images")
        return self.model_query("SectionDataSet", criteria=f"[id$eq{int(experiment_id)}]", include=include,
                                order=["sub_images.section_number$asc"])

    def get_projection_image_info(self, experiment_id: int, section_number: int) -> list[dict[str, Any]]:
        """An experiment's equalization and its section image ``section_number``."""
        return self.model_query("SectionDataSet", criteria=f"[id$eq{int(experiment_id)}]",
                                include=f"equalization,sub_images[section_number$eq{int(section_number)}]")

    def get_reference_aligned_image_channel_volumes_url(self, data_set_id: int) -> str:
        """The download URL of a data set's channels resampled into the 25 um CCF
        (``ImagesResampledTo25MicronARA``), where the server has them (``brainmap run --channel-volumes``)."""
        rows = self.model_query("WellKnownFile", criteria="well_known_file_type[name$eq'ImagesResampledTo25MicronARA']"
                                f"[attachable_id$eq{int(data_set_id)}]")
        if not rows:
            from brainmap.sdk.errors import ApiError

            raise ApiError(f"SectionDataSet {data_set_id} has no ImagesResampledTo25MicronARA file on this server",
                           url=self.build_query_url("model::WellKnownFile"), status=404)
        return self.http.base_uri + rows[0]["download_link"]

    def download_reference_aligned_image_channel_volumes(self, data_set_id: int,
                                                         save_file_path: str | None = None) -> DownloadResult:
        """The channels resampled into the 25 um CCF (a zip), where the server has them."""
        return self.retrieve_file_over_http(self.get_reference_aligned_image_channel_volumes_url(data_set_id),
                                            save_file_path or f"{int(data_set_id)}.zip")

    @staticmethod
    def calculate_injection_centroid(injection_density: Any, injection_fraction: Any, resolution: float = 25
                                     ) -> Any:
        """The injection site's centroid (um, AP/DV/LR): voxel positions weighted by density x fraction over the
        voxels with an injection fraction; None where there is none."""
        import numpy as np

        fraction = np.asarray(injection_fraction)
        where = np.nonzero(fraction)
        weights = np.asarray(injection_density)[where] * fraction[where]
        total = weights.sum()
        if total <= 0:
            return None
        return np.dot(weights, np.stack(where, axis=1)) / total * resolution

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
