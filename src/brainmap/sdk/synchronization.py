"""``SynchronizationApi``: image synchronization through the reference space, with AllenSDK's names.

Pixels are ``(x = column, y = row)`` of a full-resolution section image; reference points are um in the CCF's
PIR order (AP, DV, LR). Each method returns the ``msg`` of the answer.
"""

from __future__ import annotations

from typing import Any

from brainmap.sdk.rma import RmaApi

__all__ = ["SynchronizationApi"]


def _ids(values: Any) -> str:
    values = [values] if isinstance(values, (int, str)) else list(values)
    return ",".join(str(v) for v in values)


class SynchronizationApi(RmaApi):
    """Image to reference, reference to image, image to image, structure to image."""

    def get_image_to_reference(self, section_image_id: int, x: float, y: float) -> dict[str, Any]:
        """The reference point (um, AP/DV/LR) under pixel (x, y) of a section image."""
        return self.json_msg_query(self._url(f"image_to_reference/{int(section_image_id)}.json",
                                             x=x, y=y))

    def get_reference_to_image(self, reference_space_id: int, x: float, y: float, z: float,
                               section_data_set_ids: Any) -> list[dict[str, Any]]:
        """For each data set, the nearest section image to the point (x=AP, y=DV, z=LR um) and its pixel."""
        return self.json_msg_query(self._url(f"reference_to_image/{int(reference_space_id)}.json", x=x, y=y, z=z,
                                             section_data_set_ids=_ids(section_data_set_ids)))

    def get_image_to_image(self, section_image_id: int, x: float, y: float, section_data_set_ids: Any
                           ) -> list[dict[str, Any]]:
        """The corresponding image and pixel of each target data set."""
        return self.json_msg_query(self._url(f"image_to_image/{int(section_image_id)}.json", x=x, y=y,
                                             section_data_set_ids=_ids(section_data_set_ids)))

    def get_structure_to_image(self, section_data_set_id: int, structure_ids: Any, hemisphere_id: int | None = None
                               ) -> list[dict[str, Any]]:
        """The data set's image and pixel at each structure's centroid."""
        params: dict[str, Any] = {"structure_ids": _ids(structure_ids)}
        if hemisphere_id is not None:
            params["hemisphere_id"] = int(hemisphere_id)
        return self.json_msg_query(self._url(f"structure_to_image/{int(section_data_set_id)}.json", **params))

    def get_image_to_image_2d(self, section_image_id: int, x: float, y: float, section_image_ids: Any
                              ) -> list[dict[str, Any]]:
        """The same in-plane point on other images of the same specimen (2-D alignments only)."""
        return self.json_msg_query(self._url(f"image_to_image_2d/{int(section_image_id)}.json", x=x, y=y,
                                             section_image_ids=_ids(section_image_ids)))

    def get_image_to_atlas(self, section_image_id: int, x: float, y: float, atlas_id: int) -> dict[str, Any]:
        """The nearest plate of an atlas (1 coronal, 2 sagittal) to a pixel of an image, and the pixel on it."""
        return self.json_msg_query(self._url(f"image_to_atlas/{int(section_image_id)}.json", x=x, y=y,
                                             atlas_id=int(atlas_id)))

    def _url(self, path: str, **params: Any) -> str:
        from urllib.parse import urlencode

        return f"{self.http.base_uri}/api/v2/{path}?{urlencode(params)}"
