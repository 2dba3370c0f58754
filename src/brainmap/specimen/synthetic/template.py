"""The annotation-derived Nissl-like template now lives in the atlas (:mod:`brainmap.atlas.template`): the
aligner registers to it and must not import the virtual microscope. Re-exported here for the renderer's
"nissl" appearance and for older imports."""

from brainmap.atlas.template import (  # noqa: F401
    TEMPLATE_BLUR_UM,
    TemplateIntensities,
    hash_uniform,
    make_template,
    structure_intensities,
    upsample_linear,
)

__all__ = ["TEMPLATE_BLUR_UM", "TemplateIntensities", "hash_uniform", "make_template", "structure_intensities",
           "upsample_linear"]
