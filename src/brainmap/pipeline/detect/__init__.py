"""Signal detection: Allen's grayscale expression / projection masks from section images.

- :mod:`~brainmap.pipeline.detect.core` -- :func:`detect_section` (tissue, top-hat background, noise model,
  adaptive threshold, cell morphology, injection site) with :class:`DetectionParams` (units documented there)
  and :class:`DetectionResult`.

The true signal of virtual-microscope images, to measure detection, is test tooling and lives with the generator:
:mod:`brainmap.specimen.synthetic.replay` (nothing in ``pipeline`` imports ``specimen.synthetic``).
"""

from brainmap.pipeline.detect.core import (
    DetectionParams,
    DetectionResult,
    NoiseModel,
    detect_injection,
    detect_section,
    detect_tissue,
    fit_noise_model,
    grey_opening,
    running_max,
    running_min,
    tissue_threshold,
)

__all__ = [
    "DetectionParams",
    "DetectionResult",
    "NoiseModel",
    "detect_injection",
    "detect_section",
    "detect_tissue",
    "fit_noise_model",
    "grey_opening",
    "running_max",
    "running_min",
    "tissue_threshold",
]
