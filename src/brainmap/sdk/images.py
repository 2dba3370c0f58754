"""``ImageDownloadApi`` and ``SvgApi``: section images, atlas plates and their SVG drawings, with AllenSDK's
method names and parameters (``downsample``, ``quality``, ``range``, ``view``, ``left/top/width/height``,
``annotation``; SVG ``groups``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from brainmap.sdk.download import DownloadResult
from brainmap.sdk.errors import SdkError
from brainmap.sdk.rma import RmaApi

__all__ = ["ImageDownloadApi", "SvgApi"]

_FLAGS = ("annotation", "projection", "expression", "downsample_dimensions")
_NUMBERS = ("downsample", "quality", "atlas", "left", "top", "width", "height")
_LISTS = ("range", "rgb", "contrast")
_VIEWS = ("expression", "projection", "tumor_feature_annotation", "tumor_feature_boundary")


def _ids(values: Any) -> str:
    values = [values] if isinstance(values, int) else list(values)
    return ",".join(str(int(v)) for v in values)


class ImageDownloadApi(RmaApi):
    """Section images and atlas plates (JPEG), image display windows and atlas plate listings."""

    def get_section_image_ranges(self, section_image_ids: Any, num_rows: Any = "all", count: bool = False,
                                 as_lists: bool = True) -> list[Any]:
        """The display window (Equalization) of each image's data set: ``[rl, ru, gl, gu, bl, bu]`` lists (the
        ``range`` parameter of :meth:`download_image`), or the records with ``as_lists=False``."""
        rows = self.model_query("Equalization", criteria=f"section_data_set(section_images[id$in{_ids(section_image_ids)}])",
                                only=["blue_lower", "blue_upper", "red_lower", "red_upper", "green_lower",
                                      "green_upper"], num_rows=num_rows)
        if not as_lists:
            return rows
        return [[r["red_lower"], r["red_upper"], r["green_lower"], r["green_upper"], r["blue_lower"],
                 r["blue_upper"]] for r in rows]

    def get_section_data_sets_by_product(self, product_ids: Any, include_failed: bool = False,
                                         num_rows: Any = "all", count: bool = False) -> list[dict[str, Any]]:
        """The SectionDataSets of products (1: ISH, 5: connectivity)."""
        failed = "'false','true'" if include_failed else "'false'"
        return self.model_query("SectionDataSet", criteria=f"[failed$in{failed}],products[id$in{_ids(product_ids)}]",
                                num_rows=num_rows)

    def section_image_query(self, section_data_set_id: int, num_rows: Any = "all", count: bool = False
                            ) -> list[dict[str, Any]]:
        """The SectionImages of a data set."""
        return self.model_query("SectionImage", criteria=f"[data_set_id$eq{int(section_data_set_id)}]",
                                num_rows=num_rows)

    def atlas_image_query(self, atlas_id: int, image_type_name: str | None = None) -> list[dict[str, Any]]:
        """The annotated plates of an atlas, in section order."""
        criteria = f"[annotated$eqtrue],atlas_data_set(atlases[id$eq{int(atlas_id)}])"
        if image_type_name is not None:
            criteria += ",alternate_images[image_type$eq'" + str(image_type_name).replace("'", "") + "']"
        return self.model_query("AtlasImage", criteria=criteria, order=["sub_images.section_number"],
                                num_rows="all")

    def download_image(self, image_id: int, file_path: str | Path | None = None, endpoint: str | None = None,
                       **kwargs: Any) -> DownloadResult:
        """Download an image (JPEG) to ``file_path`` (default ``{image_id}.jpg``) with Allen's parameters."""
        params: dict[str, Any] = {}
        for name, value in kwargs.items():
            if value is None:
                continue
            if name in _FLAGS:
                params[name] = "true" if value else "false"
            elif name in _NUMBERS:
                params[name] = int(value)
            elif name in _LISTS:
                params[name] = ",".join(str(v) for v in value)
            elif name == "view":
                if value not in _VIEWS:
                    raise ValueError(f"view must be one of {', '.join(_VIEWS)}, got {value!r}")
                params[name] = value
            elif name == "colormap":
                params[name] = value if isinstance(value, str) else ",".join(str(v) for v in value)
            else:
                raise SdkError(f"download_image: unknown parameter {name!r}")
        endpoint = endpoint or f"{self.http.base_uri}/api/v2/image_download"
        url = f"{endpoint}/{int(image_id)}" + (f"?{urlencode(params)}" if params else "")
        return self.retrieve_file_over_http(url, str(file_path or f"{int(image_id)}.jpg"))

    def download_section_image(self, section_image_id: int, file_path: str | Path | None = None,
                               **kwargs: Any) -> DownloadResult:
        """A section image (JPEG)."""
        return self.download_image(section_image_id, file_path,
                                   endpoint=f"{self.http.base_uri}/api/v2/section_image_download", **kwargs)

    def download_atlas_image(self, atlas_image_id: int, file_path: str | Path | None = None, **kwargs: Any
                             ) -> DownloadResult:
        """An atlas plate (JPEG); ``annotation=True`` colours its structures."""
        return self.download_image(atlas_image_id, file_path,
                                   endpoint=f"{self.http.base_uri}/api/v2/atlas_image_download", **kwargs)

    def download_projection_image(self, projection_image_id: int, file_path: str | Path | None = None,
                                  **kwargs: Any) -> DownloadResult:
        """A section image at Allen's projection image path (JPEG)."""
        return self.download_image(projection_image_id, file_path,
                                   endpoint=f"{self.http.base_uri}/api/v2/projection_image_download", **kwargs)


class SvgApi(RmaApi):
    """An atlas plate's structure boundaries as SVG (graphic group 28)."""

    def build_query(self, section_image_id: int, groups: Any = None, download: bool = False) -> str:
        endpoint = "svg_download" if download else "svg"
        query = f"?groups={','.join(str(int(g)) for g in groups)}" if groups else ""
        return f"{self.http.base_uri}/api/v2/{endpoint}/{int(section_image_id)}{query}"

    def download_svg(self, section_image_id: int, file_path: str | Path | None = None, groups: Any = None
                     ) -> DownloadResult:
        """The SVG to ``file_path`` (default ``{id}.svg``)."""
        return self.retrieve_file_over_http(self.build_query(section_image_id, groups, download=True),
                                            str(file_path or f"{int(section_image_id)}.svg"))

    def get_svg(self, section_image_id: int, groups: Any = None) -> bytes:
        """The SVG document's bytes (retried like every request)."""
        from brainmap.sdk.http import check

        url = self.build_query(section_image_id, groups)

        def once() -> bytes:
            response = self.http.client.get(url)
            check(response)
            return response.content

        return self.http.with_retries(f"GET {url}", once)
