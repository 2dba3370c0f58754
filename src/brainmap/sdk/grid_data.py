"""File downloads: ``GridDataApi`` (grid volumes of data sets) and ``ReferenceSpaceApi`` (annotation and
template volumes), with AllenSDK's method names. Every download is verified, atomic and resumable
(:mod:`brainmap.sdk.download`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainmap.sdk.download import DownloadResult
from brainmap.sdk.errors import ApiError, SdkError
from brainmap.sdk.rma import RmaApi

__all__ = ["GridDataApi", "ReferenceSpaceApi"]

#: Grid resolutions of connectivity volumes (um).
GRID_RESOLUTIONS = (10, 25, 50, 100)


def check_resolution(resolution: Any, allowed: tuple[int, ...] = GRID_RESOLUTIONS) -> int:
    """``resolution`` as an int, or a clear error naming the allowed values."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or int(resolution) != resolution \
            or int(resolution) not in allowed:
        raise SdkError(f"resolution must be one of {', '.join(map(str, allowed))} (um), got {resolution!r}")
    return int(resolution)


class GridDataApi(RmaApi):
    """Allen's grid data service."""

    INJECTION_DENSITY = "injection_density"
    PROJECTION_DENSITY = "projection_density"
    INJECTION_FRACTION = "injection_fraction"
    DATA_MASK = "data_mask"
    ENERGY, DENSITY, INTENSITY = "energy", "density", "intensity"

    def projection_grid_url(self, section_data_set_id: int, image: str, resolution: int) -> str:
        return (f"{self.http.base_uri}/grid_data/download_file/{int(section_data_set_id)}"
                f"?image={image}&resolution={int(resolution)}")

    def expression_grid_url(self, section_data_set_id: int, include: Any = None) -> str:
        names = include if include is not None else [self.ENERGY]
        names = [names] if isinstance(names, str) else list(names)
        return f"{self.http.base_uri}/grid_data/download/{int(section_data_set_id)}?include={','.join(names)}"

    def download_projection_grid_data(self, section_data_set_id: int, image: Any = None, resolution: int | None = None,
                                      save_file_path: str | Path | None = None) -> DownloadResult:
        """One connectivity grid volume (``projection_density`` by default) at ``resolution`` um (default 25) as
        NRRD, to ``save_file_path`` (default ``{id}_{image}_{resolution}.nrrd``)."""
        if isinstance(image, (list, tuple)):
            if len(image) != 1:
                raise SdkError(f"image: one volume per download, got {image!r}")
            image = image[0]
        image = image or self.PROJECTION_DENSITY
        resolution = check_resolution(25 if resolution is None else resolution)
        path = save_file_path or f"{int(section_data_set_id)}_{image}_{resolution}.nrrd"
        return self.retrieve_file_over_http(self.projection_grid_url(section_data_set_id, image, resolution), path)

    def download_expression_grid_data(self, section_data_set_id: int, include: Any = None,
                                      path: str | Path | None = None) -> DownloadResult:
        """The grid-data zip of an ISH data set (``energy`` by default; ``include=["energy", "density",
        "intensity"]``) to ``path`` (default ``{id}.zip``)."""
        return self.retrieve_file_over_http(self.expression_grid_url(section_data_set_id, include),
                                            path or f"{int(section_data_set_id)}.zip")

    def download_gene_expression_grid_data(self, section_data_set_id: int, volume_type: str,
                                           path: str | Path) -> DownloadResult:
        """One ISH grid volume (``energy``, ``density`` or ``intensity``): its grid-data zip, unpacked beside
        ``path`` (``{volume_type}.mhd`` and ``.raw``), as AllenSDK's."""
        import zipfile

        target = Path(path)
        archive = target.with_name(f".{int(section_data_set_id)}_{volume_type}.zip")
        result = self.download_expression_grid_data(section_data_set_id, include=[volume_type], path=archive)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(target.parent)
        return result

    def download_deformation_field(self, section_data_set_id: int, header_path: str | None = None,
                                   voxel_path: str | None = None, voxel_type: str = "DeformationFieldVoxels",
                                   header_type: str = "DeformationFieldHeader") -> None:
        """A data set's deformation field (Allen's WellKnownFiles ``DeformationFieldHeader/Voxels``): a MetaImage
        header and its voxels (per CCF grid point, the displacement in microns to the affine-aligned point; see
        :mod:`brainmap.specimen.deformation`). A data set aligned without the non-linear stage has none: a
        clear error. The header names its voxel file ``dfmfld.raw`` (AllenSDK's cache name); the default paths
        are AllenSDK's ``{id}_dfmfld.mhd`` / ``.raw``."""
        rows = self.model_query("WellKnownFile", criteria=f"[attachable_id$eq{int(section_data_set_id)}],"
                                f"well_known_file_type[name$in'{header_type}','{voxel_type}']",
                                include="well_known_file_type", num_rows="all")
        found = {r["well_known_file_type"]["name"]: r for r in rows}
        missing = [t for t in (header_type, voxel_type) if t not in found]
        if missing:
            raise ApiError(f"SectionDataSet {section_data_set_id} has no {' or '.join(missing)} file on this "
                           "server (it was aligned without the non-linear stage, or not aligned)",
                           url=self.build_query_url("model::WellKnownFile"), status=404)
        for kind, target in ((header_type, header_path or f"{section_data_set_id}_dfmfld.mhd"),
                             (voxel_type, voxel_path or f"{section_data_set_id}_dfmfld.raw")):
            self.retrieve_file_over_http(f"{self.http.base_uri}/api/v2/well_known_file_download/{found[kind]['id']}",
                                         target)

    def download_alignment3d(self, section_data_set_id: int, num_rows: Any = "all", count: bool = False
                             ) -> dict[str, Any]:
        """The Alignment3d row of a data set (``trv_00..11``, ``tvr_00..11``)."""
        rows = self.model_query("Alignment3d", criteria=f"[section_data_set_id$eq{int(section_data_set_id)}]",
                                num_rows=num_rows)
        if not rows:
            raise ApiError(f"SectionDataSet {section_data_set_id} has no Alignment3d",
                           url=self.build_query_url("model::Alignment3d"))
        return rows[0]


class ReferenceSpaceApi(RmaApi):
    """The CCF volumes at Allen's archive paths (``/informatics-archive/current-release/mouse_ccf/...``): the same
    server for brainmap, Allen's download host for Allen's API."""

    CCF_2015, CCF_2016, CCF_2017 = "annotation/ccf_2015", "annotation/ccf_2016", "annotation/ccf_2017"
    CCF_VERSION_DEFAULT = CCF_2017
    AVERAGE_TEMPLATE = "average_template"
    VOXEL_RESOLUTION_10_MICRONS, VOXEL_RESOLUTION_25_MICRONS = 10, 25
    VOXEL_RESOLUTION_50_MICRONS, VOXEL_RESOLUTION_100_MICRONS = 50, 100

    def volumetric_data_url(self, data_path: str, file_name: str) -> str:
        return self.http.archive_url(f"informatics-archive/current-release/mouse_ccf/{data_path}/{file_name}")

    def annotation_url(self, ccf_version: str | None, resolution: int) -> str:
        version = ccf_version or self.CCF_VERSION_DEFAULT
        return self.volumetric_data_url(version, f"annotation_{check_resolution(resolution)}.nrrd")

    def template_url(self, resolution: int) -> str:
        return self.volumetric_data_url(self.AVERAGE_TEMPLATE,
                                        f"average_template_{check_resolution(resolution)}.nrrd")

    def download_volumetric_data(self, data_path: str, file_name: str, voxel_resolution: int | None = None,
                                 save_file_path: str | Path | None = None, release: str | None = None,
                                 coordinate_framework: str | None = None) -> DownloadResult:
        """Any file of the CCF archive (``data_path``/``file_name``) to ``save_file_path``."""
        if release not in (None, "current-release") or coordinate_framework not in (None, "mouse_ccf"):
            raise SdkError("only the current release of mouse_ccf is served")
        return self.retrieve_file_over_http(self.volumetric_data_url(data_path, file_name),
                                            save_file_path or file_name)

    def download_structure_mask(self, structure_id: int, ccf_version: str | None, resolution: int,
                                file_name: str | Path) -> DownloadResult:
        """A structure's mask (uint8, with its descendants) on the annotation's grid, to ``file_name``."""
        version = ccf_version or self.CCF_VERSION_DEFAULT
        resolution = check_resolution(resolution)
        return self.retrieve_file_over_http(self.volumetric_data_url(
            f"{version}/structure_masks/structure_masks_{resolution}", f"structure_{int(structure_id)}.nrrd"),
            file_name)

    def download_structure_mesh(self, structure_id: int, ccf_version: str | None, file_name: str | Path
                                ) -> DownloadResult:
        """A structure's surface mesh (Wavefront OBJ, microns) to ``file_name``."""
        version = ccf_version or self.CCF_VERSION_DEFAULT
        return self.retrieve_file_over_http(self.volumetric_data_url(f"{version}/structure_meshes",
                                                                     f"{int(structure_id)}.obj"), file_name)

    def download_annotation_volume(self, ccf_version: str | None, resolution: int, file_name: str | Path
                                   ) -> tuple[Any, dict[str, Any]]:
        """The annotation volume (uint32 structure ids, PIR) at ``resolution`` um to ``file_name``; returns
        ``(array, header)`` read from it, as AllenSDK's."""
        from brainmap.io.nrrd import read_nrrd

        self.retrieve_file_over_http(self.annotation_url(ccf_version, resolution), file_name)
        return read_nrrd(file_name)

    def download_template_volume(self, resolution: int, file_name: str | Path) -> DownloadResult:
        """Allen's average template at ``resolution`` um to ``file_name``. brainmap does not ship it: a brainmap
        server serves it only from a copy in its data directory (``average_template/``), else answers 404, raised
        as a clear error."""
        url = self.template_url(resolution)
        try:
            return self.retrieve_file_over_http(url, file_name)
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(f"{exc.message}; the server has no average template at {resolution} um (a brainmap "
                               "server serves one only if its data directory holds Allen's file at "
                               "average_template/; or use base_uri='http://api.brain-map.org')",
                               url=url, status=404) from None
            raise
