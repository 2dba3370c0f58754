"""The structure ontology and the CCF v3 reference space."""

from brainmap.atlas.ontology import StructureTree
from brainmap.atlas.reference_space import ReferenceSpace

__all__ = ["ReferenceSpace", "StructureTree"]
