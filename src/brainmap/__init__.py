"""brainmap: an open implementation of the Allen Brain Atlas informatics system for the mouse brain.

Packages (lower layers never import higher ones):

- :mod:`brainmap.io` -- file formats (NRRD, MetaImage, Allen grid bundles).
- :mod:`brainmap.atlas` -- the structure ontology and the CCF v3 reference space.
- :mod:`brainmap.specimen` -- section data sets, their transforms and the virtual microscope.
- :mod:`brainmap.pipeline` -- alignment, detection, gridding and structure unionization.
"""

__version__ = "0.1.0"
