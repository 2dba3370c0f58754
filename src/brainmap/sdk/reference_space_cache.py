"""``ReferenceSpaceCache``: the annotation and template volumes, the structure tree and the reference space,
cached under a manifest (AllenSDK's class of the same name).

    from brainmap.sdk import ReferenceSpaceCache

    rsc = ReferenceSpaceCache(25, manifest="ccf/manifest.json")        # the local brainmap server
    tree = rsc.get_structure_tree()                                      # a brainmap StructureTree
    annotation, header = rsc.get_annotation_volume()                     # (AP, DV, LR) uint32, PIR, 25 um
    space = rsc.get_reference_space()                                    # a brainmap ReferenceSpace
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.io.nrrd import read_nrrd, write_nrrd
from brainmap.sdk.cache import Cache
from brainmap.sdk.download import file_lock, record_local_file
from brainmap.sdk.grid_data import check_resolution
from brainmap.sdk.ontologies import OntologiesApi
from brainmap.sdk.connectivity_api import MouseConnectivityApi

__all__ = ["ReferenceSpaceCache"]

REFERENCE_SPACE_ENTRIES = {
    "ANNOTATION": "{reference_space_key}/annotation_{resolution}.nrrd",
    "TEMPLATE": "average_template/average_template_{resolution}.nrrd",
    "STRUCTURE_TREE": "structures/structures_graph_{structure_graph_id}.json",
    "STRUCTURE_MASK": "{reference_space_key}/structure_masks_{resolution}/structure_{structure_id}_{resolution}.nrrd",
}


class ReferenceSpaceCache:
    """Cached CCF files of one server at one ``resolution`` (10, 25, 50 or 100 um).

    ``manifest``: the manifest file (its folder holds the cache); ``base_uri``: the server (default the local
    brainmap server, ``$BRAINMAP_API_URL`` if set; ``http://api.brain-map.org`` for Allen's); ``cache``,
    ``offline``, ``verify``: see :mod:`brainmap.sdk.cache`; ``progress``: download bars (None: on a terminal).
    """

    def __init__(self, resolution: int = 25, reference_space_key: str = "annotation/ccf_2017",
                 manifest: str | os.PathLike[str] = "reference_space_manifest.json", version: Any = None,
                 base_uri: str | None = None, cache: bool = True, *, offline: bool = False,
                 progress: bool | None = None, verify: str = "quick", rate_limit: float | None = None,
                 api: Any = None, entries: dict[str, str] | None = None) -> None:
        self.resolution = check_resolution(resolution)
        if reference_space_key.startswith("/") or ".." in reference_space_key.split("/"):
            raise ValueError(f"reference_space_key must be like 'annotation/ccf_2017', got {reference_space_key!r}")
        self.reference_space_key = reference_space_key
        self.api = api or MouseConnectivityApi(base_uri, progress=progress, rate_limit=rate_limit)
        self.ontologies = OntologiesApi(http=self.api.http)
        self.store = Cache(self.api, manifest, {**REFERENCE_SPACE_ENTRIES, **(entries or {})}, cache=cache,
                           offline=offline, verify=verify)
        self._trees: dict[tuple[Any, int], StructureTree] = {}
        self._structure_rows: dict[tuple[Any, int], list[dict[str, Any]]] = {}

    @property
    def manifest_file(self) -> Path:
        return self.store.manifest.path

    @property
    def offline(self) -> bool:
        return self.store.offline

    # -- volumes ------------------------------------------------------------------------------------------------
    def get_annotation_volume(self, file_name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """``(annotation, header)``: structure ids per voxel, (AP, DV, LR) = PIR, ``resolution`` um."""
        path = self.store.path("ANNOTATION", file_name, reference_space_key=self.reference_space_key,
                               resolution=self.resolution)
        url = self.api.annotation_url(self.reference_space_key, self.resolution)
        return read_nrrd(self.store.file(f"the {self.resolution} um annotation", url, path))

    def get_template_volume(self, file_name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """``(template, header)``: Allen's average template at ``resolution`` um. A brainmap server has it only if
        its data directory holds a copy; otherwise the 404 is raised as :class:`~brainmap.sdk.errors.ApiError`."""
        path = self.store.path("TEMPLATE", file_name, resolution=self.resolution)
        url = self.api.template_url(self.resolution)
        if not self.store.verified(path) and not self.offline:
            self.api.download_template_volume(self.resolution, path)
        return read_nrrd(self.store.file(f"the {self.resolution} um average template", url, path))

    # -- the ontology -----------------------------------------------------------------------------------------------
    def structure_rows(self, file_name: str | None = None, structure_graph_id: int = 1) -> list[dict[str, Any]]:
        """The ontology's structures as the API gives them (with ``structure_set_ids``), cached."""
        key = (file_name, int(structure_graph_id))
        if key in self._structure_rows:
            return self._structure_rows[key]
        path = self.store.path("STRUCTURE_TREE", file_name, structure_graph_id=int(structure_graph_id)) \
            if self.store.cache or file_name else None
        url = self.ontologies.build_query_url(f"model::Structure,rma::criteria,[graph_id$in{structure_graph_id}],"
                                              "rma::include,structure_sets")
        rows = self.store.json("the structure tree", path, url,
                               lambda: self.ontologies.get_structures_with_sets(structure_graph_ids=structure_graph_id))
        self._structure_rows[key] = rows
        return rows

    def get_structure_tree(self, file_name: str | None = None, structure_graph_id: int = 1) -> StructureTree:
        """The ontology (structures with their structure sets) as a brainmap :class:`StructureTree`."""
        key = (file_name, int(structure_graph_id))
        if key not in self._trees:
            self._trees[key] = StructureTree(self.structure_rows(file_name, structure_graph_id))
        return self._trees[key]

    def get_reference_space(self, structure_file_name: str | None = None, annotation_file_name: str | None = None
                            ) -> ReferenceSpace:
        """A brainmap :class:`ReferenceSpace` of the annotation (at ``resolution``) and the structure tree."""
        tree = self.get_structure_tree(structure_file_name)
        annotation, _ = self.get_annotation_volume(annotation_file_name)
        return ReferenceSpace(tree, annotation, self.resolution)

    @classmethod
    def validate_structure_id(cls, structure_id: Any) -> int:
        """A structure id as an ``int`` (numpy integers and integral strings too); ValueError otherwise."""
        try:
            value = int(structure_id)
        except (TypeError, ValueError):
            raise ValueError(f"invalid structure_id {structure_id!r}: must be an integer") from None
        if isinstance(structure_id, float) and not float(structure_id).is_integer():
            raise ValueError(f"invalid structure_id {structure_id!r}: must be an integer")
        return value

    @classmethod
    def validate_structure_ids(cls, structure_ids: Any) -> list[int]:
        """:meth:`validate_structure_id` of each."""
        return [cls.validate_structure_id(s) for s in structure_ids]

    def get_structure_mesh(self, structure_id: int, file_name: str | None = None) -> tuple[Any, Any, Any, Any]:
        """``(vertices, vertex_normals, face_vertices, face_normals)`` of a structure's surface mesh (microns,
        PIR), read from the server's OBJ file (cached), as AllenSDK's ``read_obj`` gives them."""
        structure_id = self.validate_structure_id(structure_id)
        if file_name is None:
            file_name = str(self.manifest_file.parent / "structure_meshes" / f"{structure_id}.obj")
        path = Path(file_name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.api.download_structure_mesh(structure_id, self.reference_space_key, path)
        return _read_obj(path)

    def get_structure_mask(self, structure_id: int, file_name: str | None = None,
                           annotation_file_name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """``(mask, header)``: 1 inside ``structure_id`` and its descendants (uint8, PIR, ``resolution`` um).
        Made from the cached annotation and tree (Allen serves it as a file; the result is the same)."""
        structure_id = int(structure_id)
        path = self.store.path("STRUCTURE_MASK", file_name, reference_space_key=self.reference_space_key,
                               resolution=self.resolution, structure_id=structure_id)
        if self.store.verified(path):
            return read_nrrd(path)
        space = self.get_reference_space(annotation_file_name=annotation_file_name)
        mask = space.make_structure_mask([structure_id]).astype(np.uint8)
        with file_lock(path):
            write_nrrd(path, mask, spacing_um=self.resolution)
            record_local_file(path, f"structure mask {structure_id} made from "
                                    f"{self.api.annotation_url(self.reference_space_key, self.resolution)}")
        return read_nrrd(path)


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A Wavefront OBJ of triangles (``f a//na b//nb c//nc``): vertices, vertex normals, faces (0-based) and the
    normal index of each face corner."""
    vertices, normals, faces, face_normals = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            vertices.append([float(v) for v in parts[1:4]])
        elif parts[0] == "vn":
            normals.append([float(v) for v in parts[1:4]])
        elif parts[0] == "f":
            corners = [p.split("/") for p in parts[1:4]]
            faces.append([int(c[0]) - 1 for c in corners])
            face_normals.append([int(c[-1]) - 1 if c[-1] else -1 for c in corners])
    return (np.asarray(vertices, float).reshape(-1, 3), np.asarray(normals, float).reshape(-1, 3),
            np.asarray(faces, np.int64).reshape(-1, 3), np.asarray(face_normals, np.int64).reshape(-1, 3))
